"""The figures a request's measurement leaves: the contract between the meters that
compute them and the one renderer (:mod:`proxy.render`) that shows them.

The meters capability computes a :class:`WindowEnergy` once per request; the
exchange stores it (:meth:`proxy.exchange.Exchange.record_measurement`) and
every view of it (the ``energy`` object, the ``x-energy-*`` headers, the ledger
row, the span) is built from the exchange's typed fields. This module imports
nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


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

    @property
    def duration_s(self) -> float:
        """Length of the window."""
        return max(0.0, self.end_s - self.start_s)

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
