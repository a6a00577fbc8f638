"""Real exports: OTLP/HTTP to an in-process collector, the console, and nowhere at all."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import TelemetrySettings
from proxy.context import Component
from proxy.llamacpp import free_port
from proxy.observability.otel import Providers
from proxy.observability.telemetry import telemetry_component
from tests.support.fake_backend import FakeBackend
from tests.support.serving import serve
from tests.support.telemetry import (
    Collector,
    FakeEnergy,
    FinishLine,
    attributes,
    component,
    joulegate,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def parts(energy: FakeEnergy, done: FinishLine) -> list[Component]:
    return [telemetry_component(), component(energy), component(done)]


async def test_spans_and_metrics_reach_an_otlp_http_collector_with_their_energy(
    fake: FakeBackend,
) -> None:
    collector, energy, done = Collector(), FakeEnergy(), FinishLine()
    async with serve(collector, lifespan="off") as collector_url:
        otel = (("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "joulegate-under-test"))  # fmt: skip
        async with (
            joulegate(fake.url, parts(energy, done),
                      telemetry=TelemetrySettings(provider_name="llama.cpp", otel_env=otel)) as jg,
            httpx.AsyncClient() as c,
        ):  # fmt: skip
            r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
            await done.wait(1)
        # Leaving joulegate shut its providers down, which flushed both signals.
    assert r.status_code == 200
    assert collector.content_types == {"application/x-protobuf"}
    received = collector.spans()
    assert {resource["service.name"] for resource, _ in received} == {"joulegate-under-test"}
    by_name = {span.name: attributes(span.attributes) for _, span in received}
    assert set(by_name) == {"POST /v1/chat/completions", "queue", "chat m"}
    for name in ("POST /v1/chat/completions", "chat m"):
        attrs = by_name[name]
        assert attrs["joulegate.energy.total_j"] == 1.25
        assert attrs["joulegate.energy.gpu_j"] == 1.0
        assert attrs["joulegate.energy.meter"] == "fake"
        assert attrs["joulegate.energy.estimated"] is False
        assert attrs["joulegate.co2e_g"] == 0.125
        assert attrs["joulegate.carbon.source"] == "static"
        assert attrs["joulegate.sci_g"] == 0.5
        assert attrs["gen_ai.provider.name"] == "llama.cpp"
    # Usage once, on the inference span, so a backend summing spans counts it once.
    assert by_name["chat m"]["gen_ai.usage.output_tokens"] == 4
    assert "gen_ai.usage.output_tokens" not in by_name["POST /v1/chat/completions"]
    assert collector.sums("joulegate.energy") == {"total": 1.25, "gpu": 1.0, "cpu": 0.25}
    assert collector.sums("joulegate.co2e")["total"] == 0.125


async def test_an_unreachable_collector_only_logs(
    fake: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    energy, done = FakeEnergy(), FinishLine()
    otel = (("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"))  # fmt: skip
    async with (
        joulegate(fake.url, parts(energy, done), telemetry=TelemetrySettings(otel_env=otel)) as jg,
        httpx.AsyncClient() as c,
    ):
        started = time.monotonic()
        answers = [await c.post(jg.url + "/v1/chat/completions", json=CHAT) for _ in range(3)]
        elapsed_s = time.monotonic() - started
        await done.wait(3)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["choices"] for a in answers)
    assert elapsed_s < 1.0  # the export timeout is never on the request path
    failures = {rec.name.rsplit(".", 1)[-1] for rec in caplog.records
                if rec.name.startswith("opentelemetry")
                and rec.levelno >= logging.WARNING}  # fmt: skip
    assert failures >= {"trace_exporter", "metric_exporter"}  # logged, and nothing else


async def test_nothing_is_exported_or_printed_without_configuration(
    fake: FakeBackend, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    energy, done = FakeEnergy(), FinishLine()
    async with (
        joulegate(fake.url, parts(energy, done)) as jg,
        httpx.AsyncClient() as c,
    ):
        providers = jg.app.state.ctx.get(Providers)
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await done.wait(1)
    assert r.status_code == 200
    assert providers.exporting == ()
    assert capfd.readouterr() == ("", "")
    noisy = [rec for rec in caplog.records
             if rec.name.startswith(("opentelemetry", "joulegate.telemetry"))]  # fmt: skip
    assert noisy == []
    # Traces still propagate: the backend joins a trace even when nothing is exported.
    assert fake.seen[0].headers["traceparent"].startswith("00-")


async def test_the_console_exporter_prints_only_when_asked(
    fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    energy, done = FakeEnergy(), FinishLine()
    otel = (("OTEL_TRACES_EXPORTER", "console"), ("OTEL_METRICS_EXPORTER", "none"))
    async with (
        joulegate(fake.url, parts(energy, done), telemetry=TelemetrySettings(otel_env=otel)) as jg,
        httpx.AsyncClient() as c,
    ):
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await done.wait(1)
    out = capsys.readouterr().out
    assert '"name": "chat m"' in out
    assert '"joulegate.energy.total_j": 1.25' in out


@pytest.mark.parametrize(
    ("otel", "incoming"),
    [
        ((("OTEL_TRACES_SAMPLER", "always_off"),), None),
        ((), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    ],
)
async def test_unsampled_requests_record_nothing_but_still_propagate(
    fake: FakeBackend, otel: Any, incoming: Any
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans, energy, done = InMemorySpanExporter(), FakeEnergy(), FinishLine()
    comps = [telemetry_component(span_exporter=spans), component(energy), component(done)]
    headers = {"traceparent": incoming} if incoming else {}
    async with (
        joulegate(fake.url, comps, telemetry=TelemetrySettings(otel_env=otel)) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=headers)
        await done.wait(1)
    assert r.status_code == 200
    assert spans.get_finished_spans() == ()
    _, trace_id, _, flags = fake.seen[0].headers["traceparent"].split("-")
    assert int(flags, 16) & 1 == 0
    assert energy.trace_ids == [trace_id]
    if incoming:
        assert trace_id == incoming.split("-")[1]


async def test_without_exporters_the_trace_context_still_reaches_backend_and_ledger(
    fake: FakeBackend, tmp_path: Path
) -> None:
    from accounting.ledger.stage import accounting_resource, auth_component, record_component
    from config import LedgerSettings
    from proxy.observability.telemetry import telemetry_component
    from tests.support.ledger import db_rows

    ledger = tmp_path / "l.sqlite3"
    theirs = "4bf92f3577b34da6a3ce929d0e0e4736"
    comps = [accounting_resource, telemetry_component(), auth_component, record_component]
    async with (
        joulegate(fake.url, comps, ledger=LedgerSettings(path=str(ledger))) as jg,
        httpx.AsyncClient() as c,
    ):
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                     headers={"traceparent": f"00-{theirs}-00f067aa0ba902b7-01"})  # fmt: skip
    fresh, joined = (s.headers["traceparent"].split("-")[1] for s in fake.seen)
    rows = db_rows(ledger)
    assert [r["trace_id"] for r in rows] == [fresh, theirs]  # the row names the trace
    assert fresh != theirs and len(fresh) == 32 and joined == theirs
