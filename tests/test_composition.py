"""The composition root opens resources before the stages that read them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from accounting.forecast_stage import forecast_component
from accounting.ledger_stage import Accounting, accounting_resource, auth_component
from config import ConfigError, LedgerSettings, Settings
from proxy.backends import BackendRouter
from proxy.context import AppContext, Component
from proxy.gate import Gate


def _context(client: httpx.AsyncClient, ledger: Path) -> AppContext:
    settings = Settings(ledger=LedgerSettings(path=str(ledger)))
    return AppContext(
        settings=settings, gate=Gate(), client=client,
        router=BackendRouter(settings.backend_list, client),
    )  # fmt: skip


@pytest.mark.parametrize("component", [auth_component, forecast_component()])
async def test_a_stage_without_its_resource_fails_at_start_up_naming_both(
    component: Component, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as client:
        ctx = _context(client, tmp_path / "ledger.sqlite3")
        with pytest.raises(ConfigError, match="needs the Accounting resource"):
            async with component(ctx):
                pass


async def test_the_accounting_resource_is_one_for_every_stage_and_closed_after_them(
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient() as client:
        ctx = _context(client, tmp_path / "ledger.sqlite3")
        async with accounting_resource(ctx):
            acc = ctx.get(Accounting)
            assert acc is not None
            async with auth_component(ctx) as auth, forecast_component()(ctx):
                assert auth is not None and ctx.get(Accounting) is acc
        assert ctx.get(Accounting) is None
