"""The figures a request leaves: the contract between the stages that compute them
and every reader that shows or stores them.

Each group of figures is one typed record on the exchange, set once by its stage
(None until then): the meters' :class:`WindowEnergy` (``ex.measurement``, through
:meth:`proxy.exchange.Exchange.record_measurement`), the carbon stage's
:class:`CarbonFigures` (``ex.carbon``) and the forecast's :class:`ForecastFigure`
(``ex.forecast``). :data:`FIGURES` declares, once, what each figure is called by
every reader: the ``energy`` object and the headers (:mod:`proxy.render`), the
ledger row, the span attributes, the access log and the study dataset. This module
imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(slots=True)
class ComponentEnergy:
    """One component's share of a window."""

    component: str
    meter: str
    energy_j: float | None
    dynamic_j: float | None
    idle_power_w: float | None
    estimated: bool
    low_resolution: bool
    reason: str | None = None
    """Why ``energy_j`` is None (a failed meter), else None."""
    energy_low_j: float | None = None
    """An estimate's energy with its lowest plausible coefficients (None: no range)."""
    energy_high_j: float | None = None
    """An estimate's energy with its highest plausible coefficients (None: no range)."""


@dataclass(slots=True)
class WindowEnergy:
    """The energy of one window, whole and by component."""

    start_s: float
    end_s: float
    components: dict[str, ComponentEnergy]
    energy_j: float | None
    dynamic_j: float | None
    idle_power_w: float | None
    meter: str
    """Meters used, joined with ``+`` (``nvml+rapl``, ``estimate``)."""
    estimated: bool
    low_resolution: bool
    exclusive: bool
    """No other window overlapped this one (with one slot, always)."""
    reason: str | None = None
    energy_low_j: float | None = None
    """The total with each estimated component at its low figure (measured ones as
    measured); None when no estimated component reports a range."""
    energy_high_j: float | None = None
    """Likewise at the high figures."""
    estimate_model: str | None = None
    """The estimate models in use, joined with ``; `` (None when all is measured)."""
    attribution: str | None = None
    """How ``energy_j`` was found: ``exclusive`` (the window was this request's alone),
    ``token_share`` or ``time_share`` (a share of overlapping windows); None: not said."""
    concurrency_mean: float | None = None
    """Requests in flight on average over the window (1.0 when exclusive)."""
    window_j: float | None = None
    """With a shared window: the meters' total over it (``energy_j`` is the share)."""

    @property
    def duration_s(self) -> float:
        """Length of the window."""
        return max(0.0, self.end_s - self.start_s)

    @property
    def components_j(self) -> dict[str, float | None]:
        """Energy per component (``gpu``, ``cpu``, ``dram``, ``psys``, ``machine``)."""
        return {c: p.energy_j for c, p in self.components.items()}

    @property
    def energy_wh(self) -> float | None:
        """``energy_j`` in watt-hours."""
        return None if self.energy_j is None else self.energy_j / 3600.0

    @property
    def energy_range_j(self) -> tuple[float, float] | None:
        """``(energy_low_j, energy_high_j)``, None when there is no range."""
        if self.energy_low_j is None or self.energy_high_j is None:
            return None
        return (self.energy_low_j, self.energy_high_j)

    @property
    def power_w(self) -> float | None:
        """Average power over the window."""
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s

    def shared(self, energy_j: float, dynamic_j: float | None) -> WindowEnergy:
        """This window as one request's share of it: ``energy_j`` (and ``dynamic_j``)
        in place of the totals, and every component's energy, dynamic energy and
        range scaled by the same ratios, so that the parts still add up to the whole
        and the power follows. Idle power stays the machine's (a rate, not a share)."""
        ratio = _ratio(energy_j, self.energy_j)
        dynamic_ratio = _ratio(dynamic_j, self.dynamic_j) if dynamic_j is not None else None
        parts = {
            c: replace(
                p, energy_j=_times(p.energy_j, ratio), dynamic_j=_times(p.dynamic_j, dynamic_ratio),
                energy_low_j=_times(p.energy_low_j, ratio),
                energy_high_j=_times(p.energy_high_j, ratio),
            )
            for c, p in self.components.items()
        }  # fmt: skip
        return replace(
            self, components=parts, energy_j=energy_j, dynamic_j=dynamic_j,
            energy_low_j=_times(self.energy_low_j, ratio),
            energy_high_j=_times(self.energy_high_j, ratio),
        )  # fmt: skip


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None:
        return None
    return part / whole if whole > 0 else 0.0


def _times(value: float | None, ratio: float | None) -> float | None:
    return None if value is None or ratio is None else value * ratio


@dataclass(frozen=True, slots=True)
class CarbonFigures:
    """The carbon stage's figures for one request (:mod:`accounting.carbon.stage`).

    The carbon stage knows the intensity, PUE and embodied share for every gated
    request; the CO2eq and the operational SCI only with an energy figure to multiply."""

    source: str
    """Where the intensity came from (``static``, ``table:FR``, a live API)."""
    intensity_g_per_kwh: float | None = None
    pue: float | None = None
    sci_embodied_g: float | None = None
    """SCI's ``M``: the hardware's embodied emissions for the request's window."""
    embodied_model: str | None = None
    """How the hardware's embodied emissions were chosen (:mod:`accounting.carbon.embodied`)."""
    co2e_g: float | None = None
    """Operational CO2eq: energy x PUE x intensity (None: no energy figure)."""
    sci_g: float | None = None
    sci_operational_g: float | None = None
    sci_g_per_token: float | None = None


@dataclass(frozen=True, slots=True)
class ForecastFigure:
    """What the forecast stage expected the request to cost, set at admission."""

    energy_j: float | None
    """The forecast's median (None: no forecast could be made)."""


Record = Literal["measurement", "carbon", "forecast"]
"""The exchange's attribute holding a figure's record."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure and its name in every view; None where a view does not show it.

    An attribute whose value is a dict by component (``components_j``) is expanded
    in the span and the headers: ``{}`` in their names stands for the component."""

    record: Record
    attr: str
    """The record's attribute (a field or a property)."""
    body: str | None = None
    """Key in the ``energy`` object (and the study dataset's field of that name)."""
    body_form: str = "raw"
    """How the ``energy`` object shows it: ``raw``, ``j`` (6 decimals), ``w`` (3),
    ``wh`` (9), ``sig`` (6 significant digits), ``range`` (a pair), ``components`` (the
    record's components, each an object); ending in ``?``: left out when None."""
    column: str | None = None
    """Column of the ledger's ``requests`` table."""
    span: str | None = None
    """Span attribute (left out when None)."""
    header: str | None = None
    """Response header (left out when None)."""
    header_form: str = "j"
    """``j`` (3 decimals), ``sig`` (6 significant digits), ``bool``, ``str``."""
    access: str | None = None
    """Field of the access-log line."""
    study: str | None = None
    """Field of the study dataset, read back from the ``energy`` object's ``body`` key."""


_M: Record = "measurement"
_C: Record = "carbon"
FIGURES: tuple[Figure, ...] = (
    Figure("forecast", "energy_j", "forecast_energy_j", "j", column="forecast_energy_j",
           header="x-energy-forecast-j"),
    Figure(_M, "energy_j", "energy_j", "j", column="energy_j", span="joulegate.energy.total_j",
           header="x-energy-j", access="energy_j", study="energy_j"),
    Figure(_M, "dynamic_j", "energy_dynamic_j", "j", column="energy_dynamic_j",
           span="joulegate.energy.dynamic_j", header="x-energy-dynamic-j",
           study="energy_dynamic_j"),
    Figure(_M, "energy_wh", "energy_wh", "wh"),
    Figure(_M, "power_w", "power_w", "w", header="x-power-w", study="power_w"),
    Figure(_M, "idle_power_w", "idle_power_w", "w", study="idle_power_w"),
    Figure(_M, "duration_s", "window_s", "j"),
    Figure(_M, "meter", "meter", column="meter", span="joulegate.energy.meter",
           header="x-energy-meter", header_form="str", access="meter", study="meter"),
    Figure(_M, "estimated", "estimated", column="energy_estimated",
           span="joulegate.energy.estimated", header="x-energy-estimated", header_form="bool",
           study="estimated"),
    Figure(_M, "low_resolution", "low_resolution"),
    Figure(_M, "exclusive", "exclusive"),
    Figure(_M, "energy_range_j", "energy_range_j", "range"),
    Figure(_M, "energy_low_j", column="energy_low_j", span="joulegate.energy.low_j"),
    Figure(_M, "energy_high_j", column="energy_high_j", span="joulegate.energy.high_j"),
    Figure(_M, "estimate_model", "estimate_model", column="estimate_model",
           study="estimate_model"),
    Figure(_M, "components_j", "components", "components", column="energy_components_j",
           span="joulegate.energy.{}_j", header="x-energy-{}-j"),
    Figure(_M, "reason", "reason", "raw?"),
    Figure(_M, "window_j", "energy_window_j", "j?", span="joulegate.energy.window_j"),
    Figure(_M, "attribution", "attribution", column="attribution",
           span="joulegate.energy.attribution"),
    Figure(_M, "concurrency_mean", "concurrency_mean", column="concurrency_mean",
           span="joulegate.energy.concurrency_mean"),
    Figure(_C, "co2e_g", "co2e_g", "sig", column="co2e_g", span="joulegate.co2e_g",
           header="x-co2e-g", header_form="sig", study="co2e_g"),
    Figure(_C, "intensity_g_per_kwh", "carbon_intensity_g_per_kwh",
           column="carbon_intensity_g_per_kwh", span="joulegate.carbon.intensity_g_per_kwh",
           header="x-carbon-intensity-g-per-kwh", header_form="sig",
           study="carbon_intensity_g_per_kwh"),
    Figure(_C, "source", "carbon_source", column="carbon_source", span="joulegate.carbon.source",
           header="x-carbon-source", header_form="str", study="carbon_source"),
    Figure(_C, "pue", "pue"),
    Figure(_C, "sci_g", "sci_g", "sig", column="sci_g", span="joulegate.sci_g", header="x-sci-g",
           header_form="sig", study="sci_g"),
    Figure(_C, "sci_g_per_token", "sci_g_per_token", "sig", column="sci_g_per_token",
           span="joulegate.sci_g_per_token", header="x-sci-g-per-token", header_form="sig",
           study="sci_g_per_token"),
    Figure(_C, "sci_operational_g", "sci_operational_g", "sig", column="sci_operational_g",
           span="joulegate.sci_operational_g", header="x-sci-operational-g", header_form="sig",
           study="sci_operational_g"),
    Figure(_C, "sci_embodied_g", "sci_embodied_g", "sig", column="sci_embodied_g",
           span="joulegate.sci_embodied_g", header="x-sci-embodied-g", header_form="sig",
           study="sci_embodied_g"),
    Figure(_C, "embodied_model", "embodied_model", column="embodied_model",
           study="embodied_model"),
)  # fmt: skip
"""Every figure of the three records, in the ``energy`` object's order."""


def figures_of(record: Record) -> tuple[Figure, ...]:
    """The figures of one record, in :data:`FIGURES` order."""
    return tuple(f for f in FIGURES if f.record == record)
