"""Telemetry tests' helpers: stand-in stages (energy and carbon figures, a user, a
finish line), stand-in meters, joulegate started with exactly the given parts,
and an OTLP/HTTP collector that decodes what it receives.

The real meters, carbon and auth stages fill the same :class:`~proxy.exchange.Exchange`
fields; these fill them with known numbers so a test can check every figure
arrives where it should. Energies are multiples of 1/8 J, exact in binary, so
sums compare with ``==``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from config import Settings
from meters import machines_component, meters_component
from meters.base import Meter
from proxy.app import AppContext, Component, create_app, default_components
from proxy.context import machine_power
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from tests.support.figures import record_fake_measurement
from tests.support.serving import Running, read_body, serve

Joulegate = Running
"""joulegate under test (the suite-wide :class:`tests.support.Running`)."""


@contextlib.asynccontextmanager
async def joulegate(
    backend_url: str,
    components: Sequence[Component],
    route_handlers: Sequence[Any] = (),
    **settings: Any,
) -> AsyncIterator[Joulegate]:
    """Serve joulegate on loopback with only these components and routes."""
    app = create_app(
        Settings(backend_url=backend_url, **settings),
        components=components,
        route_handlers=route_handlers,
    )
    async with serve(app) as url:
        yield Joulegate(url, app)


def deployed(*meters: Meter) -> list[Component]:
    """:func:`~proxy.app.default_components` in their real order, with these meters
    instead of the machine's."""
    with_meters = functools.partial(meters_component, meters=list(meters))
    return [with_meters if c is machines_component else c for c in default_components()]


def component(stage: Stage) -> Component:
    """A component that yields ``stage`` (and publishes nothing)."""

    @contextlib.asynccontextmanager
    async def make(_: AppContext) -> AsyncIterator[Stage]:
        yield stage

    return make


class FakeEnergy(Stage):
    """Sets the meters' and carbon stage's fields; request *n* used ``1.25 * n`` J."""

    name = "fake_energy"

    def __init__(self) -> None:
        self.count = 0
        self.trace_ids: list[str | None] = []
        """``ex.trace_id`` as a later stage (the ledger) sees it in ``on_finished``."""

    async def on_finished(self, ex: Exchange) -> None:
        """Report energy and carbon for gated requests, as the real stages do."""
        self.trace_ids.append(ex.trace_id)
        if not ex.gated:
            return
        self.count += 1
        n = self.count
        record_fake_measurement(
            ex, energy_j=1.25 * n, dynamic_j=0.75 * n,
            components_j={"gpu": 1.0 * n, "cpu": 0.25 * n, "dram": None},
        )  # fmt: skip
        ex.carbon = CarbonFigures(
            source="static", intensity_g_per_kwh=360.0, co2e_g=0.125 * n, sci_g=0.5 * n,
            sci_operational_g=0.125 * n, sci_embodied_g=0.375 * n, sci_g_per_token=0.5 * n / 4,
        )  # fmt: skip


class HeaderUser(Stage):
    """Takes the user from ``x-user`` (as ``trust`` auth does for a user the ledger
    knows); ``x-user-unknown`` names one it does not know."""

    name = "header_user"

    async def on_arrival(self, ex: Exchange) -> None:
        """Name the user."""
        ex.user = ex.headers.get("x-user", "anonymous")
        ex.user_known = "x-user-unknown" not in ex.headers


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (a gate counter, say) until it holds."""
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("condition not met in time")


class FinishLine(Stage):
    """The last stage: lets a test wait until requests have run every ``on_closed``."""

    name = "finish_line"

    def __init__(self) -> None:
        self.closed = 0
        self._changed = asyncio.Event()

    async def on_closed(self, ex: Exchange) -> None:
        """Count the request as completely done."""
        self.closed += 1
        self._changed.set()

    async def wait(self, count: int, timeout_s: float = 5.0) -> None:
        """Return once ``count`` requests have closed."""
        async with asyncio.timeout(timeout_s):
            while self.closed < count:
                self._changed.clear()
                await self._changed.wait()


@dataclass
class DeviceReading:
    """One device as the meters publish it for the ``hw.*`` instruments."""

    id: str
    type: str
    power_w: float | None
    energy_j: float | None


@dataclass
class FakeMeters:
    """Stands in for a machine's sampler in :class:`~proxy.context.MachinePower`."""

    readings: Sequence[Any] = field(default_factory=list)
    unattributed_j: float = 0.0

    def device_readings(self) -> Sequence[Any]:
        """The latest reading of every device."""
        return self.readings

    def power_w(self, over_s: float = 1.0) -> dict[str, float | None]:
        """Not what these tests read."""
        return {}


def powering(meters: Any) -> Component:
    """A component that publishes ``meters`` as the machine's power (as the meters component
    does) and adds no stage."""

    @contextlib.asynccontextmanager
    async def make(ctx: AppContext) -> AsyncIterator[None]:
        machine_power(ctx).by_machine["local"] = meters
        yield None

    return make


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class Collector:
    """An OTLP/HTTP receiver (raw ASGI) that decodes what it is sent."""

    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point: ``POST /v1/traces`` and ``POST /v1/metrics``."""
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.content_types.add(headers.get("content-type", ""))
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        reply: bytes
        if scope["path"] == "/v1/traces":
            traces = ExportTraceServiceRequest()
            traces.ParseFromString(body)
            self.traces.append(traces)
            reply = ExportTraceServiceResponse().SerializeToString()
        elif scope["path"] == "/v1/metrics":
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            self.metrics.append(metrics)
            reply = ExportMetricsServiceResponse().SerializeToString()
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})  # fmt: skip
        await send({"type": "http.response.body", "body": reply})

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource's attributes."""
        return [
            (attributes(rs.resource.attributes), span)
            for req in self.traces
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def sums(self, name: str) -> dict[str, float]:
        """A counter's values by its ``component`` attribute."""
        out: dict[str, float] = {}
        for req in self.metrics:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == name:
                            for point in metric.sum.data_points:
                                out[attributes(point.attributes)["component"]] = point.as_double
        return out


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` on loopback from a thread (for synchronous tests); yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
