"""The one renderer of a request's figures, at the edge where the answer goes out.

Stages compute each figure once and set it on the :class:`~proxy.exchange.Exchange`
as a typed field (the meters :meth:`~proxy.exchange.Exchange.record_measurement`,
the carbon stage ``co2e_g`` and the SCI, the forecast ``forecast_energy_j``). This
module turns those fields into what the client sees: the ``energy`` object
(:func:`energy_object`) and the ``x-energy-*``, ``x-co2e-g``, ``x-sci-*`` headers
(:func:`figure_headers`). The ledger row and the span attributes are built from
the same fields by their own capabilities, so a figure has one writer and every
view of it agrees.

A group of figures appears only when its stage ran: the meters' numbers when the
request was measured, the carbon numbers when the carbon stage saw it, the
forecast when one was made; the timings always, and the machine that served
the request once it has one (``machine``; its header, ``x-joulegate-machine``, goes
out with the answer's first headers, streamed or not: :data:`MACHINE_HEADER`).
"""

from __future__ import annotations

from typing import Any

from config.units import wh_from_j
from proxy.exchange import Exchange
from proxy.figures import WindowEnergy

MACHINE_HEADER = "x-joulegate-machine"
"""The header naming the machine that served the request."""
NO_ENERGY = "no energy measurement for this request"
"""Why ``co2e_g`` is null: the request has no energy figure to multiply."""


def _r(value: float | None, digits: int = 6) -> float | None:
    """``value`` to ``digits`` decimals. Scaled to an integer and back, which agrees with
    ``round(value, digits)`` but where ``value`` lies within a float step of a half, at a
    quarter of its cost (~60 against ~240 ns; an answer has some 25 of them)."""
    if value is None:
        return None
    scale = 10.0**digits  # exact for these powers of ten
    if -1e6 < value < 1e6:  # scaled, still well inside a float's exact integers
        return round(value * scale) / scale
    return round(value, digits)


def _sig(value: float | None) -> float | None:
    """Six significant digits: grams per request are tiny and float noise is not news."""
    return None if value is None else float(f"{value:.6g}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _r(seconds * 1000.0, 3)


def _per_s(energy_j: float | None, duration_s: float) -> float | None:
    return None if energy_j is None or duration_s <= 0 else energy_j / duration_s


def _range(low_j: float | None, high_j: float | None) -> list[float | None] | None:
    return None if low_j is None or high_j is None else [_r(low_j), _r(high_j)]


def measurement_object(energy: WindowEnergy) -> dict[str, Any]:
    """The meters' numbers of the ``energy`` object (J, W and Wh), by component."""
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
        "window_s": _r(d),
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


def carbon_object(ex: Exchange) -> dict[str, Any]:
    """The carbon stage's numbers of the ``energy`` object (empty when it did not run)."""
    if ex.carbon_source is None:
        return {}
    fields: dict[str, Any] = {
        "co2e_g": _sig(ex.co2e_g),
        "carbon_intensity_g_per_kwh": ex.carbon_intensity_g_per_kwh,
        "carbon_source": ex.carbon_source,
        "pue": ex.carbon_pue,
        "sci_g": _sig(ex.sci_g),
        "sci_g_per_token": _sig(ex.sci_g_per_token),
        "sci_operational_g": _sig(ex.sci_operational_g),
        "sci_embodied_g": _sig(ex.sci_embodied_g),
        "embodied_model": ex.embodied_model,
    }
    if ex.energy_j is None:
        fields["co2e_reason"] = NO_ENERGY
    return fields


def energy_object(ex: Exchange) -> dict[str, Any]:
    """The ``energy`` object of the answer's body (or its last stream event)."""
    w = ex.window
    out: dict[str, Any] = {}
    if ex.machine is not None:
        out["machine"] = ex.machine
    if ex.forecast_made:
        out["forecast_energy_j"] = _r(ex.forecast_energy_j)
    out |= {
        "queue_ms": _ms(w.queue_s),
        "thermal_wait_ms": _ms(w.thermal_wait_s),
        "duration_ms": _ms(w.duration_s),
    }
    if ex.measurement is not None:
        out |= measurement_object(ex.measurement)
        if ex.energy_window_j is not None:  # a shared window (measurement is the share)
            out["energy_window_j"] = _r(ex.energy_window_j)
        out["attribution"] = ex.attribution
        out["concurrency_mean"] = ex.concurrency_mean
    return out | carbon_object(ex)


def figure_headers(ex: Exchange) -> dict[str, str]:
    """The figures as headers, for answers whose headers go out after the measurement
    (non-streaming); only what is known is sent."""
    out = {"x-thermal-wait-ms": f"{ex.window.thermal_wait_s * 1000:.1f}"}
    if ex.forecast_energy_j is not None:
        out["x-energy-forecast-j"] = f"{ex.forecast_energy_j:.3f}"
    energy = ex.measurement
    if energy is not None:
        # energy_j is the request's own: the window's total, or its share of a shared one.
        if ex.energy_j is not None:
            out["x-energy-j"] = f"{ex.energy_j:.3f}"
        if ex.energy_dynamic_j is not None:
            out["x-energy-dynamic-j"] = f"{ex.energy_dynamic_j:.3f}"
        if (power_w := _per_s(ex.energy_j, energy.duration_s)) is not None:
            out["x-power-w"] = f"{power_w:.3f}"
        for c, part in energy.components.items():
            if part.energy_j is not None:
                out[f"x-energy-{c}-j"] = f"{part.energy_j:.3f}"
        out["x-energy-meter"] = energy.meter
        out["x-energy-estimated"] = "true" if energy.estimated else "false"
    if ex.carbon_source is not None:
        carbon = {
            "x-co2e-g": ex.co2e_g,
            "x-carbon-intensity-g-per-kwh": ex.carbon_intensity_g_per_kwh,
            "x-sci-g": ex.sci_g,
            "x-sci-operational-g": ex.sci_operational_g,
            "x-sci-embodied-g": ex.sci_embodied_g,
            "x-sci-g-per-token": ex.sci_g_per_token,
        }
        out |= {k: f"{v:.6g}" for k, v in carbon.items() if v is not None}
        out["x-carbon-source"] = ex.carbon_source
    return out
