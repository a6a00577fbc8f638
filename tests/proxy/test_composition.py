"""The composition root opens resources before the stages that read them."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting.forecast.stage import forecast_component
from accounting.ledger.stage import Accounting, accounting_resource, auth_component
from config import ConfigError, LedgerSettings, Settings
from proxy.app import JoulegateApp, create_app
from proxy.backends import BackendRouter
from proxy.context import AppContext, Component
from proxy.gate import Gate
from proxy.intake import INFERENCE_PATHS, OLLAMA_INFERENCE_PATHS
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components
from tests.support.serving import serve

Start = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


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


async def test_metered_paths_go_straight_to_the_forwarder_and_handler_paths_stay_theirs(
    fake: FakeBackend, joulegate_app: Start, tmp_path: Path
) -> None:
    """A metered path reaches the forwarder without Litestar's router; one that a
    joulegate handler owns stays with the handler even if ``gated_paths`` names it."""
    owned = ["/v1/energy/report", "/v1/energy/requests/abc"]
    async with joulegate_app(
        fake.url,
        accounting_components(),
        ledger=LedgerSettings(path=str(tmp_path / "ledger.sqlite3")),
        gated_paths=[*owned, "/v1/audio/speech"],
        ollama_native=True,
    ) as jg:
        app = jg.app
        assert isinstance(app, JoulegateApp)
        assert app.direct_paths == (INFERENCE_PATHS | OLLAMA_INFERENCE_PATHS) | {"/v1/audio/speech"}
        async with httpx.AsyncClient(base_url=jg.url) as c:
            report = await c.get("/v1/energy/report")
            looked_up = await c.get("/v1/energy/requests/abc")
            chat = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
            await c.post("/v1/audio/speech", json={"model": "m", "input": "hi"})
    assert report.status_code == 200 and report.json()["object"] == "energy.report"
    assert looked_up.status_code == 404  # the lookup handler's answer: no such request
    assert chat.status_code == 200 and "energy" in chat.json()
    assert [s.path for s in fake.seen] == ["/v1/chat/completions", "/v1/audio/speech"]


@pytest.mark.parametrize("freeze", [True, False])
async def test_a_serving_app_keeps_its_start_up_heap_out_of_full_collections(
    freeze: bool, fake: FakeBackend, tmp_path: Path
) -> None:
    """With ``freeze_startup_heap`` (``joulegate serve``) what start-up built is not walked
    by the collector while the app serves, and is handed back to it at shutdown; without
    it nothing changes (the control: the same object is walked)."""
    settings = Settings(backend_url=fake.url, ledger=LedgerSettings(path=str(tmp_path / "l.db")))
    app = create_app(settings, components=accounting_components(), freeze_startup_heap=freeze)
    async with serve(app) as url:
        forwarder = app.forwarder
        walked = any(o is forwarder for o in gc.get_objects())
        frozen_while_serving = gc.get_freeze_count()
        async with httpx.AsyncClient(base_url=url) as c:
            chat = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert chat.status_code == 200 and "energy" in chat.json()
    assert walked is not freeze
    assert (frozen_while_serving > 0) is freeze
    assert gc.get_freeze_count() == 0  # nothing stays frozen once the app has stopped
