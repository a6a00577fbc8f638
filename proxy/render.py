"""The one renderer of a request's figures, at the edge where the answer goes out.

Stages compute each group of figures once and set it on the
:class:`~proxy.exchange.Exchange` as one typed record (``ex.measurement``, by the
meters' :meth:`~proxy.exchange.Exchange.record_measurement`; ``ex.carbon``, the CO2eq
and SCI; ``ex.forecast``). This module turns those records into what the client sees:
the ``energy`` object (:func:`energy_object`) and the ``x-energy-*``, ``x-co2e-g``,
``x-sci-*`` headers (:func:`figure_headers`), each figure under the name
:data:`proxy.figures.FIGURES` gives it. The ledger row, the span attributes, the
access log and the study dataset map the same records through the same list, so a
figure has one writer and every view of it agrees.

A group of figures appears only when its stage ran: the meters' numbers when the
request was measured, the carbon numbers when the carbon stage saw it, the
forecast when one was made; the timings always, and the machine that served
the request once it has one (``machine``; its header, ``x-joulegate-machine``, goes
out with the answer's first headers, streamed or not: :data:`MACHINE_HEADER`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.exchange import Exchange
from proxy.figures import Figure, Record, WindowEnergy, figures_of

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


def _pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else _range(*pair)


def _components(energy: WindowEnergy) -> dict[str, Any]:
    """Each component's part of the window as its own object."""
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
    return components


_BODY_FORMS: dict[str, Callable[[Any], Any] | None] = {
    "raw": None,
    "j": _r,
    "w": lambda v: _r(v, 3),
    "wh": lambda v: _r(v, 9),
    "sig": _sig,
    "range": _pair,
    "components": None,
}
_HEADER_FORMS: dict[str, Callable[[Any], str]] = {
    "j": "{:.3f}".format,
    "sig": "{:.6g}".format,
    "bool": lambda v: "true" if v else "false",
    "str": str,
}
_Shown = tuple[str, str, Callable[[Any], Any] | None, bool, bool]
_Headed = tuple[str, str, Callable[[Any], str], bool]


def _body_plan(figures: tuple[Figure, ...]) -> tuple[_Shown, ...]:
    """(attribute, key, form (None: as it is), left out when None, the components)
    per figure the ``energy`` object shows."""
    return tuple(
        (
            f.attr,
            f.body,
            _BODY_FORMS[f.body_form.rstrip("?")],
            f.body_form.endswith("?"),
            f.body_form == "components",
        )
        for f in figures
        if f.body is not None
    )


def _header_plan(figures: tuple[Figure, ...]) -> tuple[_Headed, ...]:
    return tuple(
        (f.attr, f.header, _HEADER_FORMS[f.header_form], "{}" in f.header)
        for f in figures
        if f.header is not None
    )


_RECORDS: tuple[Record, ...] = ("forecast", "measurement", "carbon")
_BODY = {r: _body_plan(figures_of(r)) for r in _RECORDS}
_HEADERS = {r: _header_plan(figures_of(r)) for r in _RECORDS}


def _shown(record: Any, plan: tuple[_Shown, ...], out: dict[str, Any]) -> None:
    """Add ``record``'s figures to the ``energy`` object ``out`` as ``plan`` says."""
    for attr, key, form, optional, components in plan:
        if components:
            out[key] = _components(record)
            continue
        value = getattr(record, attr)
        if value is None:
            if not optional:
                out[key] = None
        else:
            out[key] = value if form is None else form(value)


def _headed(record: Any, plan: tuple[_Headed, ...], out: dict[str, str]) -> None:
    """Add ``record``'s known figures to the headers ``out`` (by component where the
    header's name has ``{}``, which stands for the component)."""
    for attr, header, form, by_component in plan:
        value = getattr(record, attr)
        if by_component:
            for c, v in value.items():
                if v is not None:
                    out[header.format(c)] = form(v)
        elif value is not None:
            out[header] = form(value)


def measurement_object(energy: WindowEnergy) -> dict[str, Any]:
    """The meters' numbers of the ``energy`` object (J, W and Wh), by component."""
    out: dict[str, Any] = {}
    _shown(energy, _BODY["measurement"], out)
    return out


def carbon_object(ex: Exchange) -> dict[str, Any]:
    """The carbon stage's numbers of the ``energy`` object (empty when it did not run)."""
    if ex.carbon is None:
        return {}
    out: dict[str, Any] = {}
    _shown(ex.carbon, _BODY["carbon"], out)
    if ex.energy_j is None:
        out["co2e_reason"] = NO_ENERGY
    return out


def energy_object(ex: Exchange) -> dict[str, Any]:
    """The ``energy`` object of the answer's body (or its last stream event)."""
    w = ex.window
    out: dict[str, Any] = {}
    if ex.machine is not None:
        out["machine"] = ex.machine
    if ex.forecast is not None:
        _shown(ex.forecast, _BODY["forecast"], out)
    out["queue_ms"] = _ms(w.queue_s)
    out["thermal_wait_ms"] = _ms(w.thermal_wait_s)
    out["duration_ms"] = _ms(w.duration_s)
    if ex.measurement is not None:
        _shown(ex.measurement, _BODY["measurement"], out)
    return out | carbon_object(ex)


def figure_headers(ex: Exchange) -> dict[str, str]:
    """The figures as headers, for answers whose headers go out after the measurement
    (non-streaming); only what is known is sent."""
    out = {"x-thermal-wait-ms": f"{ex.window.thermal_wait_s * 1000:.1f}"}
    for record, plan in _HEADERS.items():
        value = getattr(ex, record)
        if value is not None:
            _headed(value, plan, out)
    return out
