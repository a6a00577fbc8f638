"""Shared fixtures: a fake backend on loopback and joulegate in front of it."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import pg
from bench.pg import PgServer
from config import LedgerSettings, Settings
from proxy.app import create_app
from proxy.context import Component
from tests.support.fake_backend import FakeBackend, serving
from tests.support.ledger import Store
from tests.support.serving import Running, serve


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    """The fake OpenAI-compatible backend, served on loopback (``fake.url``)."""
    async with serving(FakeBackend()) as backend:
        yield backend


@pytest.fixture
def joulegate_app() -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """Start joulegate with settings overrides and components (default: none)."""

    @contextlib.asynccontextmanager
    async def start(
        backend_url: str, components: Sequence[Component] = (), **settings: Any
    ) -> AsyncIterator[Running]:
        full = Settings(backend_url=backend_url, **settings)
        app = create_app(full, components=components)
        async with serve(app, settings=full) as url:  # the protocol's bounds too
            yield Running(url, app)

    return start


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for the session (skipped where PostgreSQL is not installed)."""
    with pg.pg_server(_pg_bin_dir()) as server:
        yield server


@pytest.fixture
def own_pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for one test alone, which it may stop and start again."""
    with pg.pg_server(_pg_bin_dir()) as server:
        yield server


def _pg_bin_dir() -> Path:
    bindir = pg.bin_dir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) found")
    return bindir


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, empty ledger store: a SQLite file, then a database on :func:`pg_server`."""
    if request.param == "sqlite":
        path = str(tmp_path / "l.sqlite3")
        yield Store("sqlite", LedgerSettings(path=path), ("--ledger", path))
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = f"s{next(_databases)}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    settings = LedgerSettings(
        url=server.database_url(name), fallback_path=str(tmp_path / "l.pending.jsonl")
    )
    config = tmp_path / "joulegate.toml"
    config.write_text(
        f'[ledger]\nurl = "{settings.url}"\nfallback_path = "{settings.fallback_path}"\n',
        encoding="utf-8",
    )
    yield Store("postgres", settings, ("--config", str(config)))
