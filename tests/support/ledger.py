"""Helpers for the ledger tests: a fake energy stage, component lists, row readers,
and :class:`Store`, one ledger database of either kind (the ``store`` fixture)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg

from accounting.ledger import Ledger, ledger_from_settings
from accounting.ledger.postgres import translate
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import LedgerSettings
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from tests.support.figures import record_fake_measurement

MakeLedger = Callable[[], Ledger]
"""Makes an unopened ledger on the test's store (the ``make_ledger`` fixture)."""

ENERGY_J = 7.2
CO2E_G = 0.95


class FakeEnergy(Stage):
    """Stands for the meters and carbon stages: fixed figures on every gated request."""

    name = "fake-energy"

    async def on_finished(self, ex: Exchange) -> None:
        if not ex.gated:
            return
        record_fake_measurement(
            ex, energy_j=ENERGY_J, dynamic_j=ENERGY_J / 2,
            components_j={"gpu": 6.0, "cpu": 1.2, "dram": None},
        )  # fmt: skip
        ex.carbon = CarbonFigures(
            source="static", intensity_g_per_kwh=475.0, co2e_g=CO2E_G, sci_g=CO2E_G + 0.05
        )
        ex.trace_id = "0af7651916cd43dd8448eb211c80319c"


@contextlib.asynccontextmanager
async def fake_energy(ctx: AppContext) -> AsyncIterator[Stage]:
    """Component: :class:`FakeEnergy`."""
    yield FakeEnergy()


def accounting_components() -> list[Component]:
    """Auth first, fake meters/carbon, record last: the real order."""
    return [accounting_resource, auth_component, fake_energy, record_component]


def db_rows(path: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The ledger's rows, read with a fresh connection (as another process would)."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY id", params)
        ]
    finally:
        conn.close()


@dataclass(frozen=True)
class Store:
    """One fresh ledger database, a SQLite file or a PostgreSQL database, for tests
    that must hold on both backends: open ledgers on it, configure apps with it, and
    read its rows back as another process would."""

    kind: Literal["sqlite", "postgres"]
    settings: LedgerSettings
    """``[ledger]`` naming this store (``path`` or ``url``)."""
    cli_args: tuple[str, ...]
    """What ``joulegate report`` and friends take to work on this store."""

    def ledger(self) -> Ledger:
        """An unopened ledger on this store (use it as ``async with``)."""
        return ledger_from_settings(self.settings)

    async def rows(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The stored rows matching ``where`` (SQLite dialect), oldest first."""
        if self.kind == "sqlite":
            return db_rows(Path(self.settings.path), where, params)
        conn = await asyncpg.connect(self.settings.url)
        try:
            sql = translate(f"SELECT * FROM requests WHERE {where} ORDER BY id")
            return [dict(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()
