"""One proxied request as every stage sees it, and the stage contract.

A *stage* is one capability hooked into the request's life (auth, meters,
carbon, ledger, telemetry). The proxy calls every stage's hooks in order:

``on_arrival``   before the gate: may raise a ProxyError (401, 429) to refuse
``on_admitted``  the request holds a slot (meters open their window); it runs
                 again, with ``machine`` changed, for a request moved to another
                 machine because its first one could not be reached (the latest
                 admission is the one that counts)
``on_finished``  the backend is done, failed or the client left, before the
                 last byte goes out (meters close the window, carbon, ledger)
``on_closed``    after the last byte or the disconnect (spans end)

A stage whose ``on_finished`` work only has to be *done* before the last byte (the
ledger's commit) hands it over with :meth:`Exchange.before_last_byte` instead of
awaiting it: the relay renders the rest of the answer meanwhile and awaits
:meth:`Exchange.settled` just before the last byte.

``on_finished`` and ``on_closed`` run for every request that passed
``on_arrival``, failures and cancellations included, since a cancelled request
still used energy. A request refused in ``on_arrival`` gets only ``on_closed``,
and only from the stages that saw it (those up to and including the refuser),
so refusals still appear in traces and metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from proxy.figures import CarbonFigures, ForecastFigure, WindowEnergy
from proxy.gate import Window

log = logging.getLogger("joulegate.pipeline")

T = TypeVar("T")


class _View(Generic[T]):
    """A read-only shortcut from the exchange to one figure of one of its records
    (``default`` while the record is None)."""

    __slots__ = ("_attr", "_default", "_record")

    def __init__(self, record: str, attr: str, default: Any = None) -> None:
        self._record, self._attr, self._default = record, attr, default

    def __get__(self, ex: Any, owner: type | None = None) -> T:
        if ex is None:  # looked up on the class (documentation tools)
            return self  # type: ignore[return-value]
        rec = getattr(ex, self._record)
        return self._default if rec is None else getattr(rec, self._attr)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class BackendTimings:
    """What the backend says its own work on the request took (llama-server's
    ``timings``, Ollama's ``*_duration``): places prefill and decode in time."""

    prompt_n: int | None = None
    """Prompt tokens the backend evaluated (cached ones excluded)."""
    prompt_s: float | None = None
    predicted_n: int | None = None
    predicted_s: float | None = None


def new_request_id() -> str:
    """A request's id: 128 random bits from the OS as 32 hex digits (what ``uuid4().hex``
    gave, less its version bits, without building a UUID: 1.6 -> 0.3 us)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class Exchange:
    """Everything joulegate knows about one request; stages read and add to it."""

    request_id: str
    method: str
    path: str
    endpoint: str
    """Path without the ``/v1/`` or ``/api/`` prefix, e.g. ``chat/completions``."""
    headers: dict[str, str]
    """Incoming headers, lower-case names (the last value wins)."""
    window: Window
    arrived_at: dt.datetime
    gated: bool
    body: dict[str, Any] | None = None
    backend: str | None = None
    """Name of the backend that serves the request (``host:port`` unless named)."""
    backend_url: str | None = None
    machine: str | None = None
    """Name of the measurement machine that serves the request (chosen at admission;
    ``local`` without ``[[machines]]``); its meters measure the request's energy."""
    model_requested: str | None = None
    task: str | None = None
    """What the request is for (``x-joulegate-task`` or ``metadata.task``), e.g. ``code``."""
    stream: bool = False
    usage_injected: bool = False
    user: str = "anonymous"
    user_known: bool = False
    """The ledger knows ``user`` (a key or a budget names them): metrics may name
    them too. Set with ``user`` by the auth stage."""
    key_prefix: str | None = None
    is_admin: bool = False
    status: int | None = None
    model_served: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream_content_chunks: int = 0
    """Stream chunks that carried content (counted by the forwarder)."""
    completion_tokens_counted: bool = False
    """The backend sent no usage on its stream: ``completion_tokens`` is the
    number of content chunks (one token each on llama.cpp and Ollama)."""
    failure: str | None = None
    """Why the request did not complete: ``client_disconnected``, ``backend_timeout``, …"""
    token_events: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, tokens) per stream chunk with content, for sharing the energy
    of overlapping requests (:mod:`meters.attribution`)."""
    backend_timings: BackendTimings | None = None
    """The backend's own timings of prefill and decode, when its answer had them."""
    # The figures: one record per stage that computes them, set once (None until then).
    measurement: WindowEnergy | None = None
    """The meters' measurement of the request (its share of a shared window), set by
    :meth:`record_measurement`."""
    carbon: CarbonFigures | None = None
    """The carbon stage's CO2eq and SCI (:mod:`accounting.carbon.stage`)."""
    forecast: ForecastFigure | None = None
    """What the forecast stage expected the request to cost (set at admission)."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers a stage adds that are not figures (a budget's remaining energy); the
    figures' own headers are rendered from the typed fields (:mod:`proxy.render`)."""
    backend_headers: dict[str, str] = field(default_factory=dict)
    """Extra headers for the backend request (e.g. ``traceparent``), set before
    or in ``on_admitted``."""
    response_text: str | None = None
    """Assistant text, collected only when a stage asks for content (ledger)."""
    trace_id: str | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    """Per-stage private state, keyed by stage name."""
    pending: list[Awaitable[None]] = field(default_factory=list)
    """Work handed over in ``on_finished`` that must be done before the last byte."""

    def before_last_byte(self, work: Awaitable[None]) -> None:
        """Hand over ``work``; the answer's last byte waits for it (:meth:`settled`).

        A task (or future) runs on its own meanwhile, and this request being cancelled
        does not cancel it. A coroutine is awaited in the request's own task, for work
        already started elsewhere that only has to be waited for (the ledger's commit on
        its thread): no task of its own, and one loop turn from done to the last byte
        instead of three. Such a coroutine must see its work through if cancelled."""
        self.pending.append(work)

    async def settled(self) -> None:
        """Wait for the work handed over; a failure is logged (the answer still goes)."""
        while self.pending:
            work = self.pending.pop(0)
            try:
                if isinstance(work, asyncio.Future):
                    await asyncio.shield(work)
                else:
                    await work
            except asyncio.CancelledError:
                if not isinstance(work, asyncio.Future) or not work.done():
                    raise  # this request was cancelled (a task's work goes on)
            except Exception:
                log.exception("work before the last byte of %s failed", self.request_id)

    def record_measurement(
        self,
        energy: WindowEnergy,
        *,
        attribution: str | None = None,
        concurrency_mean: float | None = None,
        share_j: float | None = None,
        share_dynamic_j: float | None = None,
    ) -> None:
        """Store the meters' result (the one place ``measurement`` is written). With a
        shared window, ``share_j`` is this request's part: it becomes ``energy_j`` and
        every figure of the window is scaled to it (:meth:`WindowEnergy.shared`); the
        window's own total stays in ``window_j``."""
        window_j = None
        if share_j is not None:
            window_j = energy.energy_j
            energy = energy.shared(share_j, share_dynamic_j)
        self.measurement = replace(
            energy, attribution=attribution, concurrency_mean=concurrency_mean, window_j=window_j
        )

    # Read-only shortcuts to figures of the records (never a second home: not settable).
    energy_j = _View[float | None]("measurement", "energy_j")
    """The request's own energy: the window's total, or its share of a shared one."""
    energy_dynamic_j = _View[float | None]("measurement", "dynamic_j")
    energy_by_component_j = _View[dict[str, float | None]]("measurement", "components_j", {})
    meter = _View[str | None]("measurement", "meter")
    energy_estimated = _View[bool]("measurement", "estimated", False)
    energy_low_j = _View[float | None]("measurement", "energy_low_j")
    energy_high_j = _View[float | None]("measurement", "energy_high_j")
    estimate_model = _View[str | None]("measurement", "estimate_model")
    attribution = _View[str | None]("measurement", "attribution")
    concurrency_mean = _View[float | None]("measurement", "concurrency_mean")
    energy_window_j = _View[float | None]("measurement", "window_j")
    forecast_energy_j = _View[float | None]("forecast", "energy_j")
    carbon_intensity_g_per_kwh = _View[float | None]("carbon", "intensity_g_per_kwh")
    carbon_source = _View[str | None]("carbon", "source")
    co2e_g = _View[float | None]("carbon", "co2e_g")
    sci_g = _View[float | None]("carbon", "sci_g")
    sci_operational_g = _View[float | None]("carbon", "sci_operational_g")
    sci_embodied_g = _View[float | None]("carbon", "sci_embodied_g")
    sci_g_per_token = _View[float | None]("carbon", "sci_g_per_token")
    embodied_model = _View[str | None]("carbon", "embodied_model")

    @property
    def forecast_made(self) -> bool:
        """The forecast stage ran for this request (``forecast_energy_j`` may be None)."""
        return self.forecast is not None


class Stage:
    """A capability hooked into every proxied request; override what you need."""

    name = "stage"
    wants_content = False
    """Set when the stage needs the response text collected (costs a parse per chunk)."""

    async def on_arrival(self, ex: Exchange) -> None:
        """Before the gate; raise a ProxyError to refuse the request."""

    async def on_admitted(self, ex: Exchange) -> None:
        """The request holds a slot and is about to be forwarded."""

    async def on_finished(self, ex: Exchange) -> None:
        """The backend is done (or failed, or the client left); last byte not yet sent."""

    async def on_closed(self, ex: Exchange) -> None:
        """After the last byte or the disconnect."""


def _hooked(stages: list[Stage], hook: str) -> tuple[tuple[int, Stage], ...]:
    """The stages (with their place in ``stages``) whose ``hook`` does something."""
    base = getattr(Stage, hook)
    return tuple((i, s) for i, s in enumerate(stages) if getattr(type(s), hook, base) is not base)


@dataclass(slots=True)
class Pipeline:
    """The stages, in order; the proxy calls them for each request.

    A stage pays only for the hooks it overrides: each hook's stages are listed once,
    so a request does not await the other stages' empty ones (seven stages, four hooks).
    """

    stages: list[Stage] = field(default_factory=list)
    _arrival: tuple[tuple[int, Stage], ...] = field(init=False, repr=False)
    _admitted: tuple[Stage, ...] = field(init=False, repr=False)
    _finished: tuple[Stage, ...] = field(init=False, repr=False)
    _closed: tuple[tuple[int, Stage], ...] = field(init=False, repr=False)
    wants_content: bool = field(init=False)
    """Whether any stage needs response text collected."""

    def __post_init__(self) -> None:
        self._arrival = _hooked(self.stages, "on_arrival")
        self._admitted = tuple(s for _, s in _hooked(self.stages, "on_admitted"))
        self._finished = tuple(s for _, s in _hooked(self.stages, "on_finished"))
        self._closed = _hooked(self.stages, "on_closed")
        self.wants_content = any(s.wants_content for s in self.stages)

    async def arrival(self, ex: Exchange) -> None:
        """Run every stage's ``on_arrival``; the first refusal propagates."""
        for i, s in self._arrival:
            ex.scratch["_arrived"] = i
            await s.on_arrival(ex)
        ex.scratch["_arrived"] = len(self.stages)

    async def refused(self, ex: Exchange) -> None:
        """A stage refused the request: close it for the stages that had seen it
        (and the refusing one), so refusals still show up in telemetry."""
        last = ex.scratch.get("_arrived", 0)
        for i, s in self._closed:
            if i > last:
                break
            try:
                await s.on_closed(ex)
            except Exception:
                log.exception("stage %s failed in on_closed for %s", s.name, ex.request_id)

    async def admitted(self, ex: Exchange) -> None:
        """Run every stage's ``on_admitted``."""
        for s in self._admitted:
            await s.on_admitted(ex)

    async def finished(self, ex: Exchange) -> None:
        """Run every stage's ``on_finished``; one stage failing does not stop the rest."""
        for s in self._finished:
            try:
                await s.on_finished(ex)
            except Exception:
                log.exception("stage %s failed in on_finished for %s", s.name, ex.request_id)

    async def closed(self, ex: Exchange) -> None:
        """Run every stage's ``on_closed``; one stage failing does not stop the rest."""
        for _, s in self._closed:
            try:
                await s.on_closed(ex)
            except Exception:
                log.exception("stage %s failed in on_closed for %s", s.name, ex.request_id)
