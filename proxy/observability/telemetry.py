"""OpenTelemetry for every proxied request: spans, GenAI metrics and energy counters.

Each request becomes one trace (or joins the caller's, from its ``traceparent``)::

    POST /v1/chat/completions     SERVER    arrival .. last byte
    ├── queue                     INTERNAL  arrival .. admission (gated paths only)
    └── chat smollm2              CLIENT    admission .. backend done; its context
                                            goes to the backend as ``traceparent``

The backend span is named ``{gen_ai.operation.name} {gen_ai.request.model}`` and
both it and the server span carry the GenAI attributes (``gen_ai.*``,
``server.*``, ``enduser.id``, ``http.response.status_code``, ``error.type``) and
joulegate's own figures under the ``joulegate.`` namespace
(:data:`proxy.observability.semconv.ENERGY_ATTRIBUTES`). They describe the same request:
count one of the two when summing. Token usage (``gen_ai.usage.*``) is on the
backend span only, the inference span the GenAI conventions name. Other paths
are ``{method} {http.route}`` on both spans (``GET /v1/models``), the route a
bounded template (:func:`proxy.observability.semconv.http_route`).

``gen_ai.provider.name`` is what the backend's ``/v1/models`` says it runs
(``owned_by``: ``llamacpp``, Ollama's ``library``, ``vllm``), else
``telemetry.provider_name``.

Metrics: ``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage``
per the GenAI conventions, ``joulegate.energy`` (J) and ``joulegate.co2e`` (g)
counters by ``user``, ``model`` and ``component``, and the hardware conventions'
``hw.power`` (W) and ``hw.energy`` (J) by ``hw.id`` and ``hw.type``. Metric
attributes come from bounded sets (:mod:`proxy.observability.semconv`): a model no backend
serves is ``other`` in ``gen_ai.request.model``, ``gen_ai.response.model`` and
``model``, as is a user the ledger does not know in ``user``; spans keep the
names as sent.

The device instruments read the first machine's meters in
:class:`~proxy.context.MachinePower`, without blocking (on the metric reader's
thread): ``device_readings()``, the latest reading of each device with ``id``, ``type``
(``gpu``, ``cpu``, …), ``power_w`` and ``energy_j`` (cumulative), either may be None;
without meters these instruments report nothing.

The component builds its providers from ``OTEL_*`` (see :mod:`proxy.observability.otel`),
publishes them (``ctx.get(Providers)``) and shuts them down, flushing, when
the app stops; tests hand it an in-memory span exporter and metric reader.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import types
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from config.settings import Settings
from proxy.backends import BackendRouter
from proxy.context import AppContext, Component, MachinePower, PowerReadings
from proxy.exchange import Exchange, Stage
from proxy.observability.otel import Providers, build_providers
from proxy.observability.semconv import (
    HW_TYPES,
    bounded,
    energy_attributes,
    energy_split,
    error_type,
    http_route,
    model_label,
    operation_name,
    outcome_attributes,
    request_attributes,
    usage_attributes,
    user_label,
)
from proxy.observability.tracecontext import TraceContextStage

log = logging.getLogger("joulegate.telemetry")

SCOPE = "joulegate"
"""Instrumentation scope of joulegate's spans and metrics."""
# Bucket boundaries the GenAI conventions advise.
_DURATION_BUCKETS_S = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))

_propagator = TraceContextTextMapPropagator()


def telemetry_component(
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Component:
    """The telemetry component; tests pass an in-memory exporter and reader."""

    @contextlib.asynccontextmanager
    async def component(ctx: AppContext) -> AsyncIterator[Stage]:
        providers = build_providers(
            ctx.settings.telemetry,
            span_exporters=[span_exporter] if span_exporter is not None else [],
            metric_readers=[metric_reader] if metric_reader is not None else [],
        )
        for line in providers.exporting:
            log.info("exporting %s", line)
        ctx.publish(providers)
        try:
            if providers.traces or providers.metrics:
                yield TelemetryStage(ctx.settings, providers, ctx.router, ctx)
            else:
                # Spans and OTel metrics nobody receives cost ~0.5 ms a request here;
                # keep only the trace context (for the backend and the ledger row).
                yield TraceContextStage()
        finally:
            # Flushing may wait on the collector: keep it off the event loop.
            await anyio.to_thread.run_sync(providers.shutdown)

    return component


@dataclass(slots=True)
class _Spans:
    """One request's open spans and its wall-clock origin."""

    server: Span
    origin_ns: int
    """Wall-clock time (ns) of ``window.arrived_s``; maps the window onto span times."""
    arrived_s: float
    queue: Span | None = None
    client: Span | None = None

    def wall_ns(self, monotonic_s: float | None) -> int:
        """A window timestamp as span time; None means now."""
        if monotonic_s is None:
            return time.time_ns()
        return self.origin_ns + round((monotonic_s - self.arrived_s) * 1e9)


class TelemetryStage(Stage):
    """Opens and closes each request's spans and records its metrics."""

    name = "telemetry"

    def __init__(
        self,
        settings: Settings,
        providers: Providers,
        router: BackendRouter,
        ctx: AppContext,
    ) -> None:
        self._router = router
        self._provider_name = settings.telemetry.provider_name
        self._user_label = settings.telemetry.metrics_user_label
        self._default_url = settings.backend_list[0].url
        self._tracer = providers.tracer_provider.get_tracer(SCOPE)
        meter = providers.meter_provider.get_meter(SCOPE)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS_S,
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._energy = meter.create_counter(
            "joulegate.energy",
            unit="J",
            description="Energy used by requests (component=total is the whole; the rest "
            "break it down and may overlap).",
        )
        self._co2e = meter.create_counter(
            "joulegate.co2e",
            unit="g",
            description="CO2-equivalent emitted by requests' energy, split like joulegate.energy.",
        )
        self._ctx = ctx  # its ``power`` is set once the meters component has opened
        meter.create_observable_gauge(
            "hw.power",
            callbacks=[self._observe("power_w")],
            unit="W",
            description="Instantaneous power consumed by the component.",
        )
        meter.create_observable_counter(
            "hw.energy",
            callbacks=[self._observe("energy_j")],
            unit="J",
            description="Energy consumed by the component.",
        )

    async def on_arrival(self, ex: Exchange) -> None:
        """Open the server span (child of the caller's) and the queue span."""
        origin_ns = time.time_ns() - round((time.monotonic() - ex.window.arrived_s) * 1e9)
        route = http_route(ex)
        attrs: dict[str, AttributeValue] = {
            "http.request.method": ex.method,
            "url.path": ex.path,
            "http.route": route,
        }
        if ex.gated:
            attrs |= request_attributes(ex, self._provider(ex))
        if "user-agent" in ex.headers:
            attrs["user_agent.original"] = ex.headers["user-agent"]
        server = self._tracer.start_span(
            f"{ex.method} {route}",
            context=_propagator.extract(ex.headers),
            kind=SpanKind.SERVER,
            attributes=attrs,
            start_time=origin_ns,
        )
        span_context = server.get_span_context()
        if span_context.is_valid:
            ex.trace_id = format_trace_id(span_context.trace_id)
        spans = _Spans(server, origin_ns, ex.window.arrived_s)
        ex.scratch[self.name] = spans
        if ex.gated:
            spans.queue = self._tracer.start_span(
                "queue", context=trace.set_span_in_context(server), start_time=origin_ns
            )
        else:
            self._start_client(ex, spans)  # forwarded at once, without on_admitted

    async def on_admitted(self, ex: Exchange) -> None:
        """Close the queue span; open the backend span and pass its context on."""
        spans: _Spans | None = ex.scratch.get(self.name)
        if spans is None:
            return
        self._end_queue(ex, spans, ex.window.admitted_s)
        if spans.client is not None:  # moved: the first machine could not be reached
            _finish(spans.client, {}, "backend_unreachable")
            spans.client.end()
        self._start_client(ex, spans)

    async def on_finished(self, ex: Exchange) -> None:
        """A request that never left the queue (full, or its client left) ends it here."""
        spans: _Spans | None = ex.scratch.get(self.name)
        if spans is not None:
            self._end_queue(ex, spans, ex.window.finished_s)

    async def on_closed(self, ex: Exchange) -> None:
        """Put the outcome, energy and carbon on the spans, end them, record metrics."""
        spans: _Spans | None = ex.scratch.pop(self.name, None)
        if spans is None:
            return
        self._end_queue(ex, spans, None)
        outcome = outcome_attributes(ex) | energy_attributes(ex)
        if spans.client is not None:
            client_attrs = outcome | usage_attributes(ex)
            if ex.failure is None and ex.status is not None:
                client_attrs["http.response.status_code"] = ex.status
            _finish(spans.client, client_attrs, error_type(ex, server_side=False))
            spans.client.end(end_time=spans.wall_ns(ex.window.finished_s))
        if ex.status is not None:
            outcome["http.response.status_code"] = ex.status
        _finish(spans.server, outcome, error_type(ex, server_side=True))
        spans.server.end()
        self._record(ex)

    def _provider(self, ex: Exchange) -> str:
        """``gen_ai.provider.name``: what the backend says it runs, else the setting."""
        return self._router.provider(ex.backend, ex.model_requested) or self._provider_name

    def _server(self, ex: Exchange) -> Mapping[str, AttributeValue]:
        """``server.*`` of the backend that served the request."""
        return _server_attributes(ex.backend_url or self._default_url)

    def _start_client(self, ex: Exchange, spans: _Spans) -> None:
        operation = operation_name(ex)
        attrs = request_attributes(ex, self._provider(ex)) if ex.gated else {}
        attrs |= self._server(ex)
        attrs["http.request.method"] = ex.method
        if operation is None:
            route = http_route(ex)
            attrs["url.template"] = route
            name = f"{ex.method} {route}"
        else:
            name = f"{operation} {ex.model_requested}" if ex.model_requested else operation
        spans.client = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(spans.server),
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=spans.wall_ns(ex.window.admitted_s),
        )
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(spans.client))
        ex.backend_headers.update(carrier)

    @staticmethod
    def _end_queue(ex: Exchange, spans: _Spans, at_s: float | None) -> None:
        if spans.queue is None:
            return
        spans.queue.set_attributes(
            {
                "joulegate.queue_ms": ex.window.queue_s * 1000.0,
                "joulegate.thermal_wait_ms": ex.window.thermal_wait_s * 1000.0,
            }
        )
        spans.queue.end(end_time=spans.wall_ns(at_s))
        spans.queue = None

    def _record(self, ex: Exchange) -> None:
        operation = operation_name(ex)
        duration_s = ex.window.duration_s
        if operation is not None and duration_s is not None:
            attrs: dict[str, AttributeValue] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": self._provider(ex),
                **self._server(ex),
            }
            models = self._router.models
            if ex.model_requested:
                attrs["gen_ai.request.model"] = bounded(ex.model_requested, models)
            if ex.model_served:
                attrs["gen_ai.response.model"] = bounded(ex.model_served, models)
            error = error_type(ex, server_side=False)
            self._duration.record(
                duration_s, attrs | ({"error.type": error} if error is not None else {})
            )
            for kind, count in (("input", ex.prompt_tokens), ("output", ex.completion_tokens)):
                if count is not None:
                    self._tokens.record(count, attrs | {"gen_ai.token.type": kind})
        labels: dict[str, AttributeValue] = {"model": model_label(ex, self._router.models)}
        if self._user_label:
            labels["user"] = user_label(ex)
        for component, energy_j, co2e_g in energy_split(ex):
            self._energy.add(energy_j, labels | {"component": component})
            if co2e_g is not None:
                self._co2e.add(co2e_g, labels | {"component": component})

    def _observe(self, field_name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            out: list[Observation] = []
            for reading in _device_readings(
                power.first if (power := self._ctx.get(MachinePower)) else None
            ):
                value = _get(reading, field_name)
                hw_id, hw_type = _get(reading, "id"), _get(reading, "type")
                if isinstance(value, int | float) and hw_id is not None and hw_type is not None:
                    out.append(
                        Observation(float(value), {"hw.id": str(hw_id), "hw.type": str(hw_type)})
                    )
            return out

        return callback


@functools.cache
def _server_attributes(url: str) -> Mapping[str, AttributeValue]:
    """``server.address`` and ``server.port`` of a backend URL (a handful, parsed once)."""
    parts = urllib.parse.urlsplit(url)
    return types.MappingProxyType(
        {
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
    )


def _finish(span: Span, attrs: Mapping[str, AttributeValue], error: str | None) -> None:
    span.set_attributes(attrs)
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))


def _device_readings(meters: PowerReadings | None) -> list[Any]:
    if meters is None:
        return []
    try:
        return [_hw_typed(r) for r in meters.device_readings()]
    except Exception:
        log.debug("could not read device power for hw.* metrics", exc_info=True)
    return []


def _hw_typed(reading: Any) -> Any:
    """A device reading with its component name mapped to the conventions' ``hw.type``."""
    kind = _get(reading, "type")
    if isinstance(reading, Mapping) and isinstance(kind, str):
        return {**reading, "type": HW_TYPES.get(kind, kind)}
    return reading


def _get(reading: Any, name: str) -> Any:
    if isinstance(reading, Mapping):
        return reading.get(name)
    return getattr(reading, name, None)
