"""A stage that fails inside joulegate is joulegate's 500, never the backend's 502:
the client, the ledger row and the span all say the same status."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import get

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import LedgerSettings, Settings
from proxy.app import AppContext, Component, create_app
from proxy.exchange import Exchange, Stage
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import db_rows
from tests.support.serving import serve

Start = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


class Boom(Stage):
    """Raises in one hook."""

    name = "boom"

    def __init__(self, hook: str) -> None:
        self.hook = hook

    async def on_arrival(self, ex: Exchange) -> None:
        if self.hook == "on_arrival":
            raise RuntimeError("stage bug")

    async def on_admitted(self, ex: Exchange) -> None:
        if self.hook == "on_admitted":
            raise RuntimeError("stage bug")

    async def on_finished(self, ex: Exchange) -> None:
        if self.hook == "on_finished":
            raise RuntimeError("stage bug")

    async def on_closed(self, ex: Exchange) -> None:
        if self.hook == "on_closed":
            raise RuntimeError("stage bug")


def boom(hook: str) -> Component:
    @contextlib.asynccontextmanager
    async def make(_: AppContext) -> AsyncIterator[Stage]:
        yield Boom(hook)

    return make


@pytest.mark.parametrize("hook", ["on_arrival", "on_admitted", "on_finished", "on_closed"])
async def test_a_failing_stage_gives_client_ledger_and_span_one_status(
    hook: str, fake: FakeBackend, joulegate_app: Start, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from proxy.observability.telemetry import telemetry_component

    ledger = tmp_path / "ledger.sqlite3"
    spans = InMemorySpanExporter()
    comps = [accounting_resource, telemetry_component(span_exporter=spans), auth_component,
             boom(hook), record_component]  # fmt: skip
    async with (
        joulegate_app(fake.url, comps, ledger=LedgerSettings(path=str(ledger))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert jg.gate.in_flight == 0
    server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    span_status = [sp.attributes.get("http.response.status_code") for sp in server]
    rows = db_rows(ledger)
    if hook in ("on_finished", "on_closed"):
        # After the backend answered: the failure is logged, nothing else changes.
        assert r.status_code == 200 and "energy" in r.json()
        assert [(row["status"], row["failure"]) for row in rows] == [(200, None)]
        assert span_status == [200]
        return
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert r.json()["error"]["code"] == "internal_error"
    assert "stage bug" not in r.text  # no internals leak to the client
    assert not [s for s in fake.seen if s.method == "POST"]  # the backend was never called
    assert span_status == [500]
    if hook == "on_admitted":  # admitted, so recorded, with the status the client saw
        assert [(row["status"], row["failure"]) for row in rows] == [(500, "internal_error")]
    else:  # refused before the gate: not recorded, like any refusal
        assert rows == []


@get("/broken", sync_to_thread=False)
def broken() -> None:
    """A joulegate route with a bug."""
    raise RuntimeError("route bug")


async def test_a_route_that_fails_is_an_openai_shaped_500_and_logged(
    fake: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(backend_url=fake.url), components=[], route_handlers=[broken])
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/broken")
    assert r.status_code == 500
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "route bug" not in r.text  # no internals leak to the client
    logged = [rec for rec in caplog.records if rec.name == "joulegate" and rec.exc_info]
    assert logged and "route bug" in str(logged[0].exc_info[1])  # type: ignore[index]
