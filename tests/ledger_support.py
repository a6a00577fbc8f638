"""Helpers for the ledger tests: a fake energy stage, component lists, row readers."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from accounting.ledger_stage import accounting_resource, auth_component, record_component
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage

ENERGY_J = 7.2
CO2E_G = 0.95


class FakeEnergy(Stage):
    """Stands for the meters and carbon stages: fixed figures on every gated request."""

    name = "fake-energy"

    async def on_finished(self, ex: Exchange) -> None:
        if not ex.gated:
            return
        ex.energy_j = ENERGY_J
        ex.energy_dynamic_j = ENERGY_J / 2
        ex.energy_by_component_j = {"gpu": 6.0, "cpu": 1.2, "dram": None}
        ex.meter = "fake"
        ex.carbon_intensity_g_per_kwh = 475.0
        ex.carbon_source = "static"
        ex.co2e_g = CO2E_G
        ex.sci_g = CO2E_G + 0.05
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
