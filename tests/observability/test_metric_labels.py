"""Metric labels come from bounded sets: made-up model and user names are ``other``.

Every series a registry holds stays in memory until the process ends, so label
values a client chooses must not each make a new one. These tests send random
names, through the real HTTP path and (for volume) straight into the stages.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from accounting import SqliteLedger
from accounting.auth import KeyStore
from accounting.budgets import Budget, BudgetBook
from config import AuthSettings, BackendSettings, LedgerSettings, Settings
from proxy.app import create_app
from proxy.backends import BackendRouter
from proxy.exchange import Exchange
from proxy.figures import CarbonFigures
from proxy.gate import Window
from proxy.observability.metrics import PrometheusStage, metrics_endpoint, prometheus_component
from proxy.observability.otel import build_providers
from proxy.observability.telemetry import TelemetryStage, telemetry_component
from tests.support.fake_backend import FakeBackend, serving
from tests.support.figures import record_fake_measurement
from tests.support.ledger import accounting_components
from tests.support.serving import serve
from tests.support.telemetry import FakeEnergy, FinishLine, HeaderUser, component, joulegate

MODELS = ("m", "m-2")
HTTP_REQUESTS = 300
DIRECT_REQUESTS = 10_000


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    """A backend listing two models; it answers any model a client names."""
    async with serving(FakeBackend(models=MODELS)) as backend:
        yield backend


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def random_name() -> str:
    return "made-up-" + secrets.token_hex(8)


def series(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of joulegate's own series: (name, labels, value)."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("joulegate_")
    ]


def label_values(samples: Iterable[tuple[str, dict[str, str], float]], label: str) -> set[str]:
    return {labels[label] for _, labels, _ in samples if label in labels}


def exchange(
    model: str, *, user: str = "anonymous", path: str = "/v1/chat/completions"
) -> Exchange:
    """A finished request as the forwarder leaves it, with energy measured."""
    now = time.monotonic()
    ex = Exchange(
        request_id=secrets.token_hex(8),
        method="POST",
        path="/v1/chat/completions",
        endpoint="chat/completions",
        headers={},
        window=Window(arrived_s=now, admitted_s=now, finished_s=now),
        arrived_at=dt.datetime.now(dt.UTC),
        gated=True,
        model_requested=model,
        model_served=model,  # llama.cpp echoes the requested name
        user=user,
        status=200,
    )
    record_fake_measurement(ex, energy_j=1.0, dynamic_j=None, components_j={"gpu": 0.75})
    ex.carbon = CarbonFigures(source="static", co2e_g=0.5)
    return ex


async def test_random_model_names_over_http_are_counted_as_other(fake: FakeBackend) -> None:
    done = FinishLine()
    parts = [prometheus_component, component(HeaderUser()), component(FakeEnergy()),
             component(done)]  # fmt: skip
    async with (
        joulegate(fake.url, parts, [metrics_endpoint]) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        for _ in range(HTTP_REQUESTS):
            r = await c.post("/v1/chat/completions", json=chat(random_name()))
            assert r.status_code == 200  # one backend: it still gets every model
        for _ in range(20):  # made-up paths and users, too
            await c.get(f"/v1/{random_name()}")
            await c.post("/v1/chat/completions", json=chat("m"),
                         headers={"x-user": random_name(), "x-user-unknown": "1"})  # fmt: skip
        await c.post("/v1/chat/completions", json=chat("m-2"), headers={"x-user": "alice"})
        await done.wait(HTTP_REQUESTS + 41)
        text = (await c.get("/metrics")).text

    samples = series(text)
    assert label_values(samples, "model") == {"m", "m-2", "other", "unknown"}
    assert label_values(samples, "user") == {"anonymous", "alice", "other"}
    assert label_values(samples, "endpoint") == {"chat/completions", "other"}
    keys = ("user", "model", "endpoint", "status")
    counted = {tuple(labels[k] for k in keys): value
               for name, labels, value in samples
               if name == "joulegate_requests_total"}  # fmt: skip
    assert counted == {
        ("anonymous", "other", "chat/completions", "200"): HTTP_REQUESTS,
        ("anonymous", "unknown", "other", "404"): 20,
        ("other", "m", "chat/completions", "200"): 20,
        ("alice", "m-2", "chat/completions", "200"): 1,
    }


async def test_ten_thousand_model_names_keep_the_registry_small(fake: FakeBackend) -> None:
    settings = Settings(backends=(BackendSettings(url=fake.url),))
    async with httpx.AsyncClient() as client:
        router = BackendRouter(settings.backend_list, client)
        await router.discover()  # what the lifespan does: the single backend lists MODELS
    registry = CollectorRegistry()
    stage = PrometheusStage(registry, router, user_label=True)
    await stage.on_closed(exchange("m"))  # the series a known model makes, made once
    tracemalloc.start()
    try:
        before_b = tracemalloc.get_traced_memory()[0]
        for i in range(DIRECT_REQUESTS):
            await stage.on_closed(exchange(random_name(), user=f"u{i}"))
        grown_b = tracemalloc.get_traced_memory()[0] - before_b
    finally:
        tracemalloc.stop()
    await stage.on_closed(exchange("m-2"))

    samples = series(generate_latest(registry).decode())
    assert grown_b <= 10 * 2**20
    assert label_values(samples, "model") == {"m", "m-2", "other"}
    # Each metric holds at most one series per known model, plus `other`, per component.
    for name in ("joulegate_energy_joules_total", "joulegate_requests_total"):
        per_name = [labels for n, labels, _ in samples if n == name]
        assert len(per_name) <= (len(MODELS) + 1) * 2
    energy = {(labels["model"], labels["component"]): value for name, labels, value in samples
              if name == "joulegate_energy_joules_total"}  # fmt: skip
    assert energy[("other", "total")] == DIRECT_REQUESTS
    assert energy[("m", "total")] == energy[("m-2", "total")] == 1.0


async def test_opentelemetry_metrics_bound_the_model_but_spans_keep_it(fake: FakeBackend) -> None:
    spans, reader, done = InMemorySpanExporter(), InMemoryMetricReader(), FinishLine()
    parts = [telemetry_component(span_exporter=spans, metric_reader=reader),
             component(HeaderUser()), component(FakeEnergy()), component(done)]  # fmt: skip
    sent = [random_name() for _ in range(HTTP_REQUESTS)]
    async with joulegate(fake.url, parts) as jg, httpx.AsyncClient(base_url=jg.url) as c:
        for model in [*sent, "m"]:
            assert (await c.post("/v1/chat/completions", json=chat(model))).status_code == 200
        await done.wait(HTTP_REQUESTS + 1)
        data = reader.get_metrics_data()
    assert data is not None
    points = {m.name: list(m.data.data_points) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}  # fmt: skip
    durations = points["gen_ai.client.operation.duration"]
    assert {p.attributes["gen_ai.request.model"] for p in durations} == {"m", "other"}
    assert {p.attributes["gen_ai.response.model"] for p in durations} == {"m", "other"}
    by_model = {p.attributes["gen_ai.request.model"]: p.count for p in durations}
    assert by_model == {"other": HTTP_REQUESTS, "m": 1}
    energy = points["joulegate.energy"]
    assert {p.attributes["model"] for p in energy} == {"m", "other"}
    assert len(energy) == 2 * 3  # (m, other) x (total, gpu, cpu)
    span_models = {(s.attributes or {}).get("gen_ai.request.model")
                   for s in spans.get_finished_spans()}  # fmt: skip
    assert set(sent) <= span_models


async def test_opentelemetry_stage_direct_volume_stays_bounded(fake: FakeBackend) -> None:
    settings = Settings(backends=(BackendSettings(url=fake.url, models=MODELS),))
    reader = InMemoryMetricReader()
    providers = build_providers(settings.telemetry, span_exporters=[], metric_readers=[reader])
    async with httpx.AsyncClient() as client:
        router = BackendRouter(settings.backend_list, client)
        stage = TelemetryStage(settings, providers, router, lambda: None)
        try:
            for i in range(2_000):
                ex = exchange(random_name() if i else "m-2", user=f"u{i}")
                await stage.on_arrival(ex)
                await stage.on_closed(ex)
            data = reader.get_metrics_data()
        finally:
            providers.shutdown()
    assert data is not None
    energy = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "joulegate.energy" for p in m.data.data_points]  # fmt: skip
    assert {(p.attributes["model"], p.attributes["user"]) for p in energy} == {
        ("m-2", "other"),
        ("other", "other"),
    }


async def test_trust_mode_names_only_users_the_ledger_knows(
    fake: FakeBackend, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await KeyStore(ledger).create("carol")
        await BudgetBook(ledger).set(Budget("dave", "month", energy_j=1e9))
    settings = Settings(
        backend_url=fake.url,
        ledger=LedgerSettings(path=str(path)),
        auth=AuthSettings(mode="trust"),
    )
    done = FinishLine()
    parts = [*accounting_components(), prometheus_component, component(done)]
    app = create_app(settings, components=parts, route_handlers=[metrics_endpoint])
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
        for user in ("carol", "dave", *(random_name() for _ in range(50))):
            r = await c.post("/v1/chat/completions", json=chat("m"),
                             headers={"x-joulegate-user": user})  # fmt: skip
            assert r.status_code == 200
        await c.post("/v1/chat/completions", json=chat("m"))
        await done.wait(53)
        text = (await c.get("/metrics")).text
    requests = {labels["user"]: value for name, labels, value in series(text)
                if name == "joulegate_requests_total"}  # fmt: skip
    assert requests == {"carol": 1, "dave": 1, "other": 50, "anonymous": 1}
