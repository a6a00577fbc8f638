"""Shared fixtures: a fake backend on loopback and joulegate in front of it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from config import Settings
from proxy.app import Component, create_app
from tests.fake_backend import FakeBackend, serving
from tests.support import Running, serve


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
        app = create_app(Settings(backend_url=backend_url, **settings), components=components)
        async with serve(app) as url:
            yield Running(url, app)

    return start
