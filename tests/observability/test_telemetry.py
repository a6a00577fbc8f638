"""Traces and OpenTelemetry metrics, read back from an in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from config import TelemetrySettings, Unauthorized
from meters.base import Meter, Reading
from meters.sampler import Sampler
from proxy.context import Component
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from proxy.gate import Window
from proxy.llamacpp import free_port
from proxy.observability.semconv import energy_split
from proxy.observability.telemetry import telemetry_component
from tests.support.fake_backend import FakeBackend, serving
from tests.support.figures import record_fake_measurement
from tests.support.telemetry import (
    DeviceReading,
    FakeEnergy,
    FakeMeters,
    FinishLine,
    HeaderUser,
    component,
    joulegate,
    powering,
    until,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "temperature": 0.5}  # fmt: skip
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    """The fake backend, listing the model these tests ask for (``m``)."""
    async with serving(FakeBackend(models=("m",))) as backend:
        yield backend


@dataclass
class Rig:
    """joulegate's telemetry with in-memory outputs and stand-in stages around it."""

    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    energy: FakeEnergy = field(default_factory=FakeEnergy)
    done: FinishLine = field(default_factory=FinishLine)
    extra: list[Component] = field(default_factory=list)

    def components(self) -> list[Component]:
        """Telemetry first, as in a real deployment; the finish line last."""
        return [
            telemetry_component(span_exporter=self.spans, metric_reader=self.reader),
            component(HeaderUser()),
            *self.extra,
            component(self.energy),
            component(self.done),
        ]

    def finished(self) -> list[ReadableSpan]:
        """The exported spans (complete once the app has shut down)."""
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Data points of one metric, collected now."""
        data = self.reader.get_metrics_data()
        if data is None:  # nothing recorded at all
            return []
        return [
            p
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.data.data_points
        ]


@pytest.fixture
def rig() -> Rig:
    """A fresh telemetry rig."""
    return Rig()


def one(spans: Sequence[ReadableSpan], kind: SpanKind, name: str | None = None) -> ReadableSpan:
    found = [s for s in spans if s.kind == kind and (name is None or s.name == name)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def tree(spans: Sequence[ReadableSpan]) -> tuple[ReadableSpan, ReadableSpan, ReadableSpan]:
    server = one(spans, SpanKind.SERVER)
    queue = one(spans, SpanKind.INTERNAL, "queue")
    client = one(spans, SpanKind.CLIENT)
    return server, queue, client


def traceparent_ids(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    return trace_id, span_id


async def test_a_request_is_a_server_span_with_queue_and_backend_children(
    fake: FakeBackend, rig: Any
) -> None:
    async with (
        joulegate(fake.url, rig.components(),
                      telemetry=TelemetrySettings(provider_name="vllm")) as jg,
        httpx.AsyncClient() as c,
    ):  # fmt: skip
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                         headers={"x-user": "alice", "user-agent": "pytest"})  # fmt: skip
        await rig.done.wait(1)
    assert r.status_code == 200
    server, queue, client = tree(rig.finished())

    assert server.name == "POST /v1/chat/completions"
    assert client.name == "chat m"
    assert server.parent is None
    assert queue.parent is not None and client.parent is not None
    assert queue.parent.span_id == server.context.span_id
    assert client.parent.span_id == server.context.span_id
    assert queue.context.trace_id == client.context.trace_id == server.context.trace_id
    # The queue ends when the backend call starts; both lie inside the server span.
    times = [server.start_time, queue.start_time, queue.end_time, client.start_time,
             client.end_time, server.end_time]  # fmt: skip
    assert times == sorted(t or 0 for t in times)

    port = int(fake.url.rsplit(":", 1)[1])
    genai = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": "m",
        "gen_ai.request.max_tokens": 4,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": False,
        "gen_ai.response.model": "m",
        "gen_ai.response.id": "chatcmpl-fake",
        "gen_ai.response.finish_reasons": ("length",),
        "enduser.id": "alice",
        "http.response.status_code": 200,
    }
    ours = {
        "joulegate.energy.total_j": 1.25,
        "joulegate.energy.dynamic_j": 0.75,
        "joulegate.energy.gpu_j": 1.0,
        "joulegate.energy.cpu_j": 0.25,
        "joulegate.energy.meter": "fake",
        "joulegate.energy.estimated": False,
        "joulegate.co2e_g": 0.125,
        "joulegate.carbon.intensity_g_per_kwh": 360.0,
        "joulegate.carbon.source": "static",
        "joulegate.sci_g": 0.5,
        "joulegate.sci_operational_g": 0.125,
        "joulegate.sci_embodied_g": 0.375,
        "joulegate.sci_g_per_token": 0.125,
    }
    for span in (server, client):
        attrs = dict(span.attributes or {})
        assert attrs.items() >= (genai | ours).items(), span.name
        assert "joulegate.energy.dram_j" not in attrs  # not measured: absent, never 0
        assert "error.type" not in attrs
        assert span.status.status_code == StatusCode.UNSET
        duration_ms = attrs["joulegate.duration_ms"]
        assert isinstance(duration_ms, float) and duration_ms > 0
        assert attrs["joulegate.power.avg_w"] == pytest.approx(1.25 / (duration_ms / 1000))
        assert attrs["joulegate.queue_ms"] == pytest.approx(
            json.loads(r.text)["energy"]["queue_ms"], abs=0.01
        )
    assert client.attributes is not None and server.attributes is not None
    # Token usage once, on the inference (CLIENT) span: summing spans counts it once.
    assert {k: v for k, v in client.attributes.items() if k.startswith("gen_ai.usage.")} == {
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 4,
    }
    assert not [k for k in server.attributes if k.startswith("gen_ai.usage.")]
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == port
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["user_agent.original"] == "pytest"
    assert server.attributes["joulegate.request_id"]
    assert queue.attributes is not None and "joulegate.queue_ms" in queue.attributes
    # The trace id is on the exchange before on_finished, where the ledger writes its row.
    assert rig.energy.trace_ids == [format_trace_id(server.context.trace_id)]


async def test_incoming_traceparent_is_joined_and_the_backend_call_carries_it_on(
    fake: FakeBackend, rig: Any
) -> None:
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                         headers={"traceparent": incoming, "tracestate": "vendor=1"})  # fmt: skip
        await rig.done.wait(1)
    assert r.status_code == 200
    server, _, client = tree(rig.finished())
    assert format_trace_id(server.context.trace_id) == TRACE_ID
    assert server.parent is not None and format_span_id(server.parent.span_id) == PARENT_ID
    assert server.parent.is_remote

    (seen,) = fake.seen
    trace_id, parent_id = traceparent_ids(seen.headers["traceparent"])
    assert trace_id == TRACE_ID
    assert parent_id == format_span_id(client.context.span_id)
    assert seen.headers["tracestate"] == "vendor=1"
    assert rig.energy.trace_ids == [TRACE_ID]


async def test_a_new_trace_starts_when_the_caller_sends_none(fake: FakeBackend, rig: Any) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await rig.done.wait(2)
    servers = [s for s in rig.finished() if s.kind == SpanKind.SERVER]
    clients = {s.context.trace_id: s for s in rig.finished() if s.kind == SpanKind.CLIENT}
    assert len({s.context.trace_id for s in servers}) == 2
    for seen in fake.seen:
        trace_id, parent_id = traceparent_ids(seen.headers["traceparent"])
        client = clients[int(trace_id, 16)]
        assert parent_id == format_span_id(client.context.span_id)


async def test_a_stream_records_its_usage_and_finish_reason(fake: FakeBackend, rig: Any) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True})
        await rig.done.wait(1)
    assert r.status_code == 200
    _, _, client = tree(rig.finished())
    attrs = dict(client.attributes or {})
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["gen_ai.usage.output_tokens"] == 4
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)
    assert attrs["joulegate.energy.total_j"] == 1.25


@pytest.mark.parametrize("status", [500, 503])
async def test_a_backend_error_marks_both_spans(fake: FakeBackend, rig: Any, status: int) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                         headers={"x-fake-status": str(status)})  # fmt: skip
        await rig.done.wait(1)
    assert r.status_code == status
    server, _, client = tree(rig.finished())
    for span in (server, client):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == str(status)
        assert span.attributes["http.response.status_code"] == status


async def test_a_client_error_fails_the_backend_span_only(fake: FakeBackend, rig: Any) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                         headers={"x-fake-status": "400"})  # fmt: skip
        await rig.done.wait(1)
    assert r.status_code == 400
    server, _, client = tree(rig.finished())
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes is not None and client.attributes["error.type"] == "400"
    assert server.status.status_code == StatusCode.UNSET
    assert server.attributes is not None and "error.type" not in server.attributes


async def test_an_unreachable_backend_is_an_error_span(rig: Any) -> None:
    async with (
        joulegate(f"http://127.0.0.1:{free_port()}", rig.components()) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await rig.done.wait(1)
    assert r.status_code == 502
    server, _, client = tree(rig.finished())
    assert client.status.status_code == StatusCode.ERROR
    assert client.status.description == "backend_unreachable"
    assert client.attributes is not None
    assert client.attributes["error.type"] == "backend_unreachable"
    assert "http.response.status_code" not in client.attributes  # the backend never answered
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["error.type"] == "backend_unreachable"
    assert server.attributes["http.response.status_code"] == 502


async def test_a_request_refused_by_a_full_queue_never_gets_a_backend_span(
    fake: FakeBackend, rig: Any
) -> None:
    async with (
        joulegate(fake.url, rig.components(), max_queue=0) as jg,
        httpx.AsyncClient(timeout=10) as c,
    ):
        slow = asyncio.ensure_future(
            c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-fake-delay-ms": "300"})
        )
        await until(lambda: jg.gate.in_flight == 1)
        refused = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        assert (await slow).status_code == 200
        await rig.done.wait(2)
    assert refused.status_code == 503
    spans = rig.finished()
    failed = [
        s for s in spans if s.kind == SpanKind.SERVER and s.status.status_code == StatusCode.ERROR
    ]
    (server,) = failed
    assert server.attributes is not None and server.attributes["error.type"] == "queue_full"
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    assert [s.name for s in children] == ["queue"]
    assert len([s for s in spans if s.kind == SpanKind.CLIENT]) == 1


async def test_queue_wait_is_its_own_span(fake: FakeBackend, rig: Any) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient(timeout=10) as c:
        first = asyncio.ensure_future(
            c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-fake-delay-ms": "200"})
        )
        await until(lambda: jg.gate.in_flight == 1)
        second = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await first
        await rig.done.wait(2)
    waited = float(second.headers["x-queue-ms"])
    assert waited > 100
    queues = [s for s in rig.finished() if s.name == "queue"]
    longest = max(queues, key=lambda s: (s.end_time or 0) - (s.start_time or 0))
    assert longest.attributes is not None
    assert longest.attributes["joulegate.queue_ms"] == pytest.approx(waited, abs=0.1)
    assert ((longest.end_time or 0) - (longest.start_time or 0)) / 1e6 == pytest.approx(
        waited, abs=2
    )


async def test_other_paths_get_an_http_client_span_and_traceparent(
    fake: FakeBackend, rig: Any
) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.get(jg.url + "/v1/models")
        await rig.done.wait(1)
    assert r.status_code == 200
    spans = rig.finished()
    server = one(spans, SpanKind.SERVER, "GET /v1/models")
    client = one(spans, SpanKind.CLIENT, "GET /v1/models")
    assert server.attributes is not None and server.attributes["http.route"] == "/v1/models"
    assert client.attributes is not None and client.attributes["url.template"] == "/v1/models"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert not [s for s in spans if s.name == "queue"]
    assert client.attributes is not None and "gen_ai.operation.name" not in client.attributes
    (seen,) = fake.seen
    assert traceparent_ids(seen.headers["traceparent"])[1] == format_span_id(client.context.span_id)
    assert rig.points("gen_ai.client.operation.duration") == []


async def test_genai_and_energy_metrics(fake: FakeBackend, rig: Any) -> None:
    async with (
        joulegate(fake.url, rig.components(),
                      telemetry=TelemetrySettings(provider_name="ollama")) as jg,
        httpx.AsyncClient() as c,
    ):  # fmt: skip
        for user in ("alice", "alice", "bob"):
            r = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-user": user})
            assert r.status_code == 200
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                         headers={"x-user": "bob", "x-fake-status": "500"})  # fmt: skip
        await rig.done.wait(4)
        durations = rig.points("gen_ai.client.operation.duration")
        tokens = rig.points("gen_ai.client.token.usage")
        energy = rig.points("joulegate.energy")
        co2e = rig.points("joulegate.co2e")

    port = int(fake.url.rsplit(":", 1)[1])
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": "m",
            "server.address": "127.0.0.1", "server.port": port}  # fmt: skip
    by_attrs = {frozenset(p.attributes.items()): p for p in durations}
    ok = by_attrs[frozenset((base | {"gen_ai.response.model": "m"}).items())]
    failed = by_attrs[frozenset((base | {"error.type": "500"}).items())]
    assert (ok.count, failed.count) == (3, 1)
    assert ok.explicit_bounds[:3] == (0.01, 0.02, 0.04)

    token_sums = {p.attributes["gen_ai.token.type"]: (p.count, p.sum) for p in tokens}
    assert token_sums == {"input": (3, 21), "output": (3, 12)}

    # Requests 1-4 used 1.25 n J; the fourth (the 500) counts too: it used energy.
    got = {(p.attributes["user"], p.attributes["model"], p.attributes["component"]): p.value
           for p in energy}  # fmt: skip
    assert got == {
        ("alice", "m", "total"): 1.25 + 2.5, ("alice", "m", "gpu"): 1.0 + 2.0,
        ("alice", "m", "cpu"): 0.25 + 0.5,
        ("bob", "m", "total"): 3.75 + 5.0, ("bob", "m", "gpu"): 3.0 + 4.0,
        ("bob", "m", "cpu"): 0.75 + 1.0,
    }  # fmt: skip
    co2 = {(p.attributes["user"], p.attributes["component"]): p.value for p in co2e}
    assert co2[("alice", "total")] == 0.125 + 0.25
    assert co2[("bob", "gpu")] == pytest.approx((0.375 + 0.5) * 1.0 / 1.25)


async def test_the_user_attribute_can_be_switched_off(fake: FakeBackend, rig: Any) -> None:
    settings = TelemetrySettings(metrics_user_label=False)
    async with (
        joulegate(fake.url, rig.components(), telemetry=settings) as jg,
        httpx.AsyncClient() as c,
    ):
        for user in ("alice", "bob"):
            await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-user": user})
        await rig.done.wait(2)
        energy = rig.points("joulegate.energy")
    totals = [p for p in energy if p.attributes["component"] == "total"]
    assert [(dict(p.attributes), p.value) for p in totals] == [
        ({"model": "m", "component": "total"}, 1.25 + 2.5)
    ]


async def test_device_power_and_energy_follow_the_meters(fake: FakeBackend, rig: Any) -> None:
    cpu = {"id": "package-0", "type": "cpu", "power_w": 48.0, "energy_j": None}
    meters = FakeMeters([DeviceReading("gpu0", "gpu", 212.5, 1000.0), cpu])
    rig.extra.append(powering(meters))
    async with joulegate(fake.url, rig.components()):
        power = {p.attributes["hw.id"]: (p.attributes["hw.type"], p.value)
                 for p in rig.points("hw.power")}  # fmt: skip
        meters.readings = [DeviceReading("gpu0", "gpu", 230.0, 1500.0)]
        energy = {p.attributes["hw.id"]: p.value for p in rig.points("hw.energy")}
    assert power == {"gpu0": ("gpu", 212.5), "package-0": ("cpu", 48.0)}
    assert energy == {"gpu0": 1500.0}


@pytest.mark.parametrize("meters", [None, object(), FakeMeters([{"id": "x"}])])
async def test_device_instruments_are_quiet_without_usable_meters(
    fake: FakeBackend, rig: Any, meters: Any
) -> None:
    if meters is not None:
        rig.extra.append(powering(meters))
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        assert (await c.post(jg.url + "/v1/chat/completions", json=CHAT)).status_code == 200
        await rig.done.wait(1)
        # A collection did happen (the request's tokens are there), and in it the
        # device instruments reported nothing rather than zeros or a made-up device.
        assert rig.points("gen_ai.client.token.usage") != []
        assert rig.points("hw.power") == []
        assert rig.points("hw.energy") == []


async def test_device_power_comes_from_the_real_sampler(fake: FakeBackend, rig: Any) -> None:
    class Steady(Meter):
        name = "steady"

        @property
        def components(self) -> tuple[str, ...]:
            return ("gpu", "dram")

        def read(self) -> dict[str, Reading]:
            return {"gpu": Reading(power_w=250.0), "dram": Reading(power_w=6.0)}

    now = [100.0]
    sampler = Sampler([Steady()], clock=lambda: now[0])
    for _ in range(4):
        sampler.sample()
        now[0] += 0.5
    rig.extra.append(powering(sampler))
    async with joulegate(fake.url, rig.components()):
        power = {p.attributes["hw.id"]: (p.attributes["hw.type"], p.value)
                 for p in rig.points("hw.power")}  # fmt: skip
        energy = rig.points("hw.energy")
    assert power == {"gpu": ("gpu", pytest.approx(250.0)), "dram": ("memory", pytest.approx(6.0))}
    # Four samples 0.5 s apart: 1.5 s of steady power integrated since start-up.
    by_id = {p.attributes["hw.id"]: (p.attributes["hw.type"], p.value) for p in energy}
    assert by_id == {"gpu": ("gpu", pytest.approx(375.0)), "dram": ("memory", pytest.approx(9.0))}


def test_energy_is_split_into_total_and_measured_components() -> None:
    def exchange(
        energy_j: float | None = None,
        co2e_g: float | None = None,
        energy_by_component_j: dict[str, float | None] | None = None,
    ) -> Exchange:
        ex = Exchange("r", "POST", "/v1/chat/completions", "chat/completions", {},
                      Window(arrived_s=0.0), dt.datetime.now(dt.UTC), gated=True)  # fmt: skip
        if energy_j is not None:
            record_fake_measurement(
                ex, energy_j=energy_j, dynamic_j=None, components_j=energy_by_component_j or {}
            )
        if co2e_g is not None:
            ex.carbon = CarbonFigures(source="static", co2e_g=co2e_g)
        return ex

    assert energy_split(exchange()) == []  # not measured: nothing counted, not a zero
    split = energy_split(
        exchange(
            energy_j=4.0, co2e_g=2.0, energy_by_component_j={"gpu": 3.0, "cpu": 1.0, "dram": None}
        )
    )
    assert split == [("total", 4.0, 2.0), ("gpu", 3.0, 1.5), ("cpu", 1.0, 0.5)]
    assert energy_split(exchange(energy_j=0.0, co2e_g=0.0, energy_by_component_j={"gpu": 0.0})) == [
        ("total", 0.0, 0.0),
        ("gpu", 0.0, None),
    ]
    assert energy_split(exchange(energy_j=2.0)) == [("total", 2.0, None)]


class _Refuser(Stage):
    """Refuses every request the way auth does, after telemetry has seen it."""

    async def on_arrival(self, ex: Exchange) -> None:
        raise Unauthorized("no key", code="invalid_api_key")


async def test_a_refused_request_still_gets_its_server_span(fake: FakeBackend, rig: Any) -> None:
    rig.extra.append(component(_Refuser()))
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    (server,) = [s for s in rig.finished() if s.kind == SpanKind.SERVER]
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["error.type"] == "authentication_error"
    assert not [s for s in rig.finished() if s.kind == SpanKind.CLIENT]
    assert fake.seen == []


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/models/m", "/v1/models/{model}"),
        ("/v1/models/made-up-name", "/v1/models/{model}"),
        ("/v1/files/file-abc123/content", "/v1/*"),
        ("/v1/chat/completions", "/v1/*"),  # a GET: not inference
    ],
)
async def test_other_paths_are_named_by_a_bounded_route(
    fake: FakeBackend, rig: Any, path: Any, route: Any
) -> None:
    async with joulegate(fake.url, rig.components()) as jg, httpx.AsyncClient() as c:
        await c.get(jg.url + path)
        await rig.done.wait(1)
    server = one(rig.finished(), SpanKind.SERVER)
    assert server.name == f"GET {route}"
    assert server.attributes is not None
    assert (server.attributes["http.route"], server.attributes["url.path"]) == (route, path)
    client = one(rig.finished(), SpanKind.CLIENT)
    assert client.name == f"GET {route}"


@pytest.mark.parametrize(
    ("owned_by", "provider"),
    [("llamacpp", "llama.cpp"), ("library", "ollama"), ("vllm", "vllm"), ("someone", "setting")],
)
async def test_the_provider_is_what_the_backend_says_it_runs(
    rig: Any, owned_by: Any, provider: Any
) -> None:
    settings = TelemetrySettings(provider_name="setting")
    async with (
        serving(FakeBackend(models=("m",), owned_by=owned_by)) as fake,
        joulegate(fake.url, rig.components(), telemetry=settings) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await rig.done.wait(1)
        durations = rig.points("gen_ai.client.operation.duration")
    assert r.status_code == 200
    server, _, client = tree(rig.finished())
    for span in (server, client):
        assert span.attributes is not None
        assert span.attributes["gen_ai.provider.name"] == provider, span.name
    assert [p.attributes["gen_ai.provider.name"] for p in durations] == [provider]
