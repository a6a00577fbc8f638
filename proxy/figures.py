"""The figures a request's measurement leaves: the contract between the meters that
compute them and the one renderer (:mod:`proxy.render`) that shows them.

The meters capability computes a :class:`WindowEnergy` once per request; the
exchange stores it (:meth:`proxy.exchange.Exchange.record_measurement`) and
every view of it (the ``energy`` object, the ``x-energy-*`` headers, the ledger
row, the span) is built from the exchange's typed fields. This module imports
nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass


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
