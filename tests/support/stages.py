"""Small stages for tests: one that keeps every finished exchange to inspect, and the
component that adds a given stage to an app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage


class Capture(Stage):
    """Keeps every finished exchange for the test to inspect."""

    def __init__(self) -> None:
        self.seen: list[Exchange] = []

    async def on_finished(self, ex: Exchange) -> None:
        self.seen.append(ex)


def component(stage: Stage) -> Component:
    @contextlib.asynccontextmanager
    async def make(_: AppContext) -> AsyncIterator[Stage]:
        yield stage

    return make
