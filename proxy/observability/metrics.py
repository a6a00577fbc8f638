"""``GET /metrics``: joulegate's figures in the Prometheus text format.

Series (``user`` is left out when ``telemetry.metrics_user_label`` is off)::

    joulegate_energy_joules_total{user,model,backend,task,component}   counter  J
    joulegate_co2e_grams_total{user,model,task,component}      counter  gCO2e
    joulegate_requests_total{user,model,backend,endpoint,status}  counter, refusals included
    joulegate_tokens_total{model,type}                    counter, type=prompt|completion
    joulegate_request_duration_seconds{model,endpoint}    histogram, arrival to last byte
    joulegate_queue_length                                gauge, requests waiting for a slot
    joulegate_in_flight                                   gauge, requests holding a slot
    joulegate_power_watts{component}                      gauge, the meters' power now
    joulegate_unattributed_energy_joules_total            counter, J with nothing in flight
    joulegate_machine_*{machine}                          per machine (:mod:`.machine_metrics`)

Every request the pipeline saw is counted, those refused before the queue
(``401``, budget ``429``, ``503``) included: the stage sits before the auth stage,
since a refused request is closed only by the stages up to the refusing one.
``joulegate_power_watts`` is read from the meters' sampler at scrape time (its
average power per component over the last second; no meter is read then), and so
is ``joulegate_unattributed_energy_joules_total``, what the meters measured while no
request was in flight: with ``component="total"``'s sum it adds up to the meters'
total, however the requests shared their windows.

``component="total"`` is a request's whole energy; the other components
(``gpu``, ``cpu``, ``dram``, ``psys``, ``machine``) break it down and may
overlap (``machine`` includes the rest), so sum one of them, not all. The
registry is the app's own, made in its lifespan, never the process-global one.

Label values come from bounded sets (see :mod:`proxy.observability.semconv`): ``model`` is a
model some backend serves, ``user`` one the ledger knows or ``anonymous``,
``endpoint`` a metered path or ``models``, ``task`` a bundled task name or one
listed in ``telemetry.metric_tasks`` (``none``: untagged); anything else is
``other``.

In ``keys`` auth mode ``/metrics`` names every user with their energy, so it
asks for an admin key (``Authorization: Bearer jg-…``) unless
``telemetry.metrics_public`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from config.errors import NotFound
from proxy.backends import BackendRouter
from proxy.context import AppContext, ClientAuth, MachinePower
from proxy.exchange import Exchange, Stage
from proxy.observability.machine_metrics import MachineCollector
from proxy.observability.semconv import (
    endpoint_label,
    energy_split,
    model_label,
    status_label,
    task_label,
    user_label,
)
from proxy.task import BUNDLED_TASKS

log = logging.getLogger("joulegate.metrics")

_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class _Series:
    """A labelled metric's children by label values, each looked up once: the label
    sets are bounded, so this stays small, and ``labels()`` validates on every call."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class PrometheusStage(Stage):
    """Counts every request that reaches the end of the pipeline, and its energy."""

    name = "prometheus"

    def __init__(
        self,
        registry: CollectorRegistry,
        router: BackendRouter,
        *,
        user_label: bool,
        tasks: Collection[str] = BUNDLED_TASKS,
    ) -> None:
        self._router = router
        self._user_label = user_label
        self._tasks = frozenset(tasks)
        who = ["user"] if user_label else []
        self._energy = Counter(
            "joulegate_energy_joules",
            "Energy used by requests, in joules (component=total is the whole).",
            [*who, "model", "backend", "task", "component"],
            registry=registry,
        )
        self._co2e = Counter(
            "joulegate_co2e_grams",
            "CO2-equivalent emitted by requests' energy, in grams.",
            [*who, "model", "task", "component"],
            registry=registry,
        )
        self._requests = Counter(
            "joulegate_requests",
            "Requests proxied, by final HTTP status (499: the client left).",
            [*who, "model", "backend", "endpoint", "status"],
            registry=registry,
        )
        self._tokens = Counter(
            "joulegate_tokens",
            "Tokens processed, as the backend reported them (completion tokens of a stream "
            "without usage are its content chunks).",
            ["model", "type"],
            registry=registry,
        )
        self._duration = Histogram(
            "joulegate_request_duration_seconds",
            "Time from a request's arrival to its last byte, queue included.",
            ["model", "endpoint"],
            buckets=_DURATION_BUCKETS_S,
            registry=registry,
        )
        self._energy_by, self._co2e_by = _Series(self._energy), _Series(self._co2e)
        self._requests_by, self._tokens_by = _Series(self._requests), _Series(self._tokens)
        self._duration_by = _Series(self._duration)

    async def on_closed(self, ex: Exchange) -> None:
        """Count the request, its tokens, duration, energy and CO2eq."""
        model = model_label(ex, self._router.models)
        endpoint = endpoint_label(ex)
        who = [user_label(ex)] if self._user_label else []
        task = task_label(ex, self._tasks)
        backend = ex.backend or "none"  # a configured backend's name, or refused before
        self._requests_by(*who, model, backend, endpoint, status_label(ex)).inc()
        for kind, count in (("prompt", ex.prompt_tokens), ("completion", ex.completion_tokens)):
            if count is not None and count > 0:
                self._tokens_by(model, kind).inc(count)
        self._duration_by(model, endpoint).observe(time.monotonic() - ex.window.arrived_s)
        for component, energy_j, co2e_g in energy_split(ex):
            self._energy_by(*who, model, backend, task, component).inc(energy_j)
            if co2e_g is not None:
                self._co2e_by(*who, model, task, component).inc(co2e_g)


class PowerCollector(Collector):
    """``joulegate_power_watts{component}``: the meters' power, read when scraped.

    It reads :class:`~proxy.context.MachinePower`, which the meters component publishes when
    it opens (it comes later in the pipeline); before that, or without meters, the gauge has
    no samples.
    """

    _NAME = "joulegate_power_watts"
    _HELP = "Power drawn now by each metered component (average over the last second), in W."

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    _IDLE = "joulegate_unattributed_energy_joules"
    _IDLE_HELP = "Energy the meters measured while no request was in flight, in joules."

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        """The families without samples (so registering them reads no meter)."""
        return [
            GaugeMetricFamily(self._NAME, self._HELP, labels=["component"]),
            CounterMetricFamily(self._IDLE, self._IDLE_HELP),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        """One sample per component with a known power, and the unattributed energy."""
        family = GaugeMetricFamily(self._NAME, self._HELP, labels=["component"])
        meters = power.first if (power := self._ctx.get(MachinePower)) else None
        if meters is None:
            return [family]
        idle = CounterMetricFamily(self._IDLE, self._IDLE_HELP, value=meters.unattributed_j)
        try:
            readings = dict(meters.power_w())
        except Exception:
            log.debug("could not read the meters' power for /metrics", exc_info=True)
            readings = {}
        for component, watts in sorted(readings.items()):
            if watts is not None:
                family.add_metric([str(component)], float(watts))
        return [family, idle]


@contextlib.asynccontextmanager
async def prometheus_component(ctx: AppContext) -> AsyncIterator[Stage]:
    """The app's Prometheus registry (published for ``/metrics``) and its stage."""
    registry = CollectorRegistry(auto_describe=True)
    gate = ctx.gate
    Gauge(
        "joulegate_queue_length", "Requests waiting for a slot in the gate.", registry=registry
    ).set_function(lambda: gate.waiting)
    Gauge(
        "joulegate_in_flight",
        "Requests holding a slot (talking to the backend).",
        registry=registry,
    ).set_function(lambda: gate.in_flight)
    # Read at scrape time: the meters component comes later in the pipeline.
    registry.register(PowerCollector(ctx))
    registry.register(MachineCollector(ctx))
    telemetry = ctx.settings.telemetry
    stage = PrometheusStage(
        registry,
        ctx.router,
        user_label=telemetry.metrics_user_label,
        tasks=(*BUNDLED_TASKS, *telemetry.metric_tasks),
    )
    ctx.publish(registry)
    yield stage


@get("/metrics", name="metrics")
async def metrics_endpoint(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[bytes]:
    """Prometheus exposition (OpenMetrics when the scraper asks for it); an admin key
    is required in ``keys`` mode unless ``telemetry.metrics_public``."""
    registry = ctx.get(CollectorRegistry)
    if registry is None:
        raise NotFound("metrics are not enabled", code="not_found")
    auth = ctx.get(ClientAuth)
    if auth is not None and not ctx.settings.telemetry.metrics_public:
        await auth.admin_guard({k.lower(): v for k, v in request.headers.items()})
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), media_type=content_type)
