"""The meters' place in the proxy: a pipeline stage and its app component.

A request's window runs from ``on_admitted`` (it holds a gate slot) to
``on_finished`` (the backend is done; the slot is released only after every
``on_finished`` hook). The stage then sets, on the :class:`~proxy.Exchange`:

* ``energy_j``, ``energy_dynamic_j``, ``energy_by_component_j``, ``meter``,
  ``energy_estimated`` for the stages after it (carbon, ledger, telemetry);
* the response's ``energy`` object (see :func:`energy_body`);
* headers ``x-energy-j``, ``x-energy-dynamic-j``, ``x-power-w``,
  ``x-energy-<component>-j`` for each measured component, ``x-energy-meter``,
  ``x-energy-estimated`` and ``x-thermal-wait-ms`` (sent on non-streaming
  responses; a stream's headers leave before its energy is known).

A value that could not be measured is absent from the headers and ``null`` in
the body, with a ``reason``; it is never a made-up zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from config.units import wh_from_j
from meters.base import Activity, Meter
from meters.detect import detect_meters
from meters.sampler import Sampler
from meters.sharing import OverlapBook
from meters.thermal import CpuThermometer, ThermalGuard
from meters.window import WindowEnergy
from proxy.context import AppContext
from proxy.exchange import Exchange, Stage

log = logging.getLogger("joulegate.meters")


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _per_s(energy_j: float | None, duration_s: float) -> float | None:
    return None if energy_j is None or duration_s <= 0 else energy_j / duration_s


def _range(low_j: float | None, high_j: float | None) -> list[float | None] | None:
    return None if low_j is None or high_j is None else [_r(low_j), _r(high_j)]


def energy_body(energy: WindowEnergy) -> dict[str, Any]:
    """The numbers the ``energy`` object of a response carries (J, W and Wh)."""
    d = energy.duration_s
    components: dict[str, Any] = {}
    for c, part in energy.components.items():
        item: dict[str, Any] = {
            "energy_j": _r(part.energy_j),
            "energy_dynamic_j": _r(part.dynamic_j),
            "power_w": _r(_per_s(part.energy_j, d), 3),
            "idle_power_w": _r(part.idle_power_w, 3),
            "meter": part.meter,
            "estimated": part.estimated,
            "low_resolution": part.low_resolution,
            "energy_range_j": _range(part.energy_low_j, part.energy_high_j),
        }
        if part.reason is not None:
            item["reason"] = part.reason
        components[c] = item
    body: dict[str, Any] = {
        "energy_j": _r(energy.energy_j),
        "energy_dynamic_j": _r(energy.dynamic_j),
        "energy_wh": _r(None if energy.energy_j is None else wh_from_j(energy.energy_j), 9),
        "power_w": _r(energy.power_w, 3),
        "idle_power_w": _r(energy.idle_power_w, 3),
        "window_s": round(d, 6),
        "meter": energy.meter,
        "estimated": energy.estimated,
        "low_resolution": energy.low_resolution,
        "exclusive": energy.exclusive,
        "energy_range_j": _range(energy.energy_low_j, energy.energy_high_j),
        "estimate_model": energy.estimate_model,
        "components": components,
    }
    if energy.reason is not None:
        body["reason"] = energy.reason
    return body


def energy_headers(energy: WindowEnergy) -> dict[str, str]:
    """The ``x-energy-*`` headers (only for what was measured)."""
    out: dict[str, str] = {}
    if energy.energy_j is not None:
        out["x-energy-j"] = f"{energy.energy_j:.3f}"
    if energy.dynamic_j is not None:
        out["x-energy-dynamic-j"] = f"{energy.dynamic_j:.3f}"
    power = energy.power_w
    if power is not None:
        out["x-power-w"] = f"{power:.3f}"
    for c, part in energy.components.items():
        if part.energy_j is not None:
            out[f"x-energy-{c}-j"] = f"{part.energy_j:.3f}"
    out["x-energy-meter"] = energy.meter
    out["x-energy-estimated"] = "true" if energy.estimated else "false"
    return out


class MeterStage(Stage):
    """Opens a window when a request is admitted and measures it when it finishes."""

    name = "meters"

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.overlaps = OverlapBook()

    async def on_admitted(self, ex: Exchange) -> None:
        """Open the window at the admission instant."""
        start = ex.window.admitted_s or time.monotonic()
        ex.scratch[self.name] = self.sampler.open_window(start)
        self.overlaps.open(id(ex), start, ex.token_events)

    async def on_finished(self, ex: Exchange) -> None:
        """Close the window, measure it and put the numbers on the exchange."""
        token = ex.scratch.pop(self.name, None)
        ex.response_headers["x-thermal-wait-ms"] = f"{ex.window.thermal_wait_s * 1000:.1f}"
        if token is None:
            return  # never admitted: it used no energy of its own
        end = ex.window.finished_s or time.monotonic()
        try:
            await self.sampler.fresh_sample()
            energy = self.sampler.measure(token, end)
        finally:
            self.sampler.close_window(token, end)
            self.overlaps.close(id(ex), end)
        share = None
        if not energy.exclusive and energy.energy_j is not None:
            share = self.overlaps.share(id(ex), self.sampler.intervals(token.start_s, end), end)
        ex.energy_j = energy.energy_j
        ex.energy_dynamic_j = energy.dynamic_j
        ex.energy_by_component_j = {c: p.energy_j for c, p in energy.components.items()}
        ex.meter = energy.meter
        ex.energy_estimated = energy.estimated
        ex.energy_low_j = energy.energy_low_j
        ex.energy_high_j = energy.energy_high_j
        ex.estimate_model = energy.estimate_model
        if energy.exclusive:
            ex.attribution, ex.concurrency_mean = "exclusive", 1.0
        ex.energy.update(energy_body(energy))
        if share is not None:  # overlapping windows: this request's fair share
            ex.energy["energy_window_j"] = ex.energy["energy_j"]
            ex.energy_j = share.energy_j
            ex.energy_dynamic_j = share.dynamic_j
            ex.attribution, ex.concurrency_mean = share.method, share.concurrency_mean
            ex.energy["energy_j"] = _r(share.energy_j)
            ex.energy["energy_dynamic_j"] = _r(share.dynamic_j)
        ex.energy["attribution"] = ex.attribution
        ex.energy["concurrency_mean"] = ex.concurrency_mean
        ex.response_headers.update(energy_headers(energy))
        if share is not None:
            ex.response_headers["x-energy-j"] = f"{share.energy_j:.3f}"
            ex.response_headers["x-energy-dynamic-j"] = f"{share.dynamic_j:.3f}"


def _ready(sampler: Sampler) -> dict[str, Any]:
    failing = sampler.failing()
    return {
        "name": "meters",
        "ok": bool(sampler.meters) and len(failing) < len(sampler.meters),
        "meter": sampler.label,
        "estimated": sampler.estimated,
        "failing": failing,
    }


@contextlib.asynccontextmanager
async def meters_component(
    ctx: AppContext,
    *,
    meters: Sequence[Meter] | None = None,
    activity: Activity | None = None,
    thermometer: CpuThermometer | None = None,
) -> AsyncIterator[Stage]:
    """Detect (or take) the meters, run the sampler and the thermal guard, yield the stage.

    Tests pass ``meters`` (fakes) and, for the estimate, the ``activity`` its
    meter was built with; the sampler is published as ``ctx.power`` and ``ctx.get(Sampler)``.
    """
    s = ctx.settings.meters
    activity = activity or Activity()
    if meters is None:
        meters = (await asyncio.to_thread(detect_meters, s, activity=activity)).meters
    sampler = Sampler(meters, sample_hz=s.sample_hz, external_hz=s.external_hz, activity=activity)
    for line in sampler.ignored:
        log.info("meter: ignoring %s", line)
    await asyncio.to_thread(sampler.start)
    ctx.power = sampler
    ctx.publish(sampler)
    ctx.ready_checks.append(lambda: _ready(sampler))
    guard_task: asyncio.Task[None] | None = None
    if s.thermal_limit_c > 0:
        cpu = thermometer or CpuThermometer(s.hwmon_root)

        def temperatures_c() -> dict[str, float]:
            return {**sampler.temperatures_c(), **cpu.temperatures_c()}

        guard = ThermalGuard(
            ctx.gate, temperatures_c, limit_c=s.thermal_limit_c, resume_c=s.thermal_resume_c
        )
        guard_task = asyncio.create_task(guard.run(), name="joulegate-thermal-guard")
        log.info(
            "thermal guard on: pause above %.0f °C, resume below %.0f °C",
            s.thermal_limit_c, s.thermal_resume_c,
        )  # fmt: skip
    try:
        yield MeterStage(sampler)
    finally:
        if guard_task is not None:
            guard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard_task
        await asyncio.to_thread(sampler.close)
