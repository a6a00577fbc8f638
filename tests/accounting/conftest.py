"""Fixtures of the accounting tests: ledgers of both kinds on one fresh store."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from accounting.ledger import PostgresLedger, SqliteLedger
from tests.support.ledger import MakeLedger

_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
async def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeLedger]:
    """Makes (unopened) ledgers on one fresh store, SQLite file or PostgreSQL database:
    a test that takes it runs once against each implementation of the contract."""
    if request.param == "sqlite":
        yield lambda: SqliteLedger(tmp_path / "l.sqlite3")
        return
    server = request.getfixturevalue("pg_server")
    name = f"c{next(_names)}"
    conn = await asyncpg.connect(server.url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    url = server.database_url(name)
    yield lambda: PostgresLedger(url, fallback_path=tmp_path / "p.jsonl")
