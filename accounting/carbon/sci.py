"""The Green Software Foundation's Software Carbon Intensity (SCI), as pure functions.

    SCI = (E * I + M) per R

- ``E``: energy the software used, in kWh (joulegate: the request's metered
  energy with the PUE applied);
- ``I``: the grid's carbon intensity, in gCO2e/kWh;
- ``M = TE * (TiR / EL) * (RR / ToR)``: the share of the hardware's embodied
  emissions ``TE`` that the request is charged for: time reserved ``TiR`` over
  the expected lifetime ``EL``, times the share of the machine reserved
  ``RR / ToR``;
- ``R``: the functional unit. joulegate reports SCI per request and per output
  token, the unit suggested for LLM inference.

The specification's worked example: a server with ``TE`` = 1,000 kgCO2e and a
4-year life, reserved whole for one hour, is charged
``1,000,000 g * 1 h / (4 * 8,760 h)`` ≈ 28.5 gCO2e.

Source: Green Software Foundation, *Software Carbon Intensity (SCI)
Specification* (ISO/IEC 21031:2024).
"""

from __future__ import annotations

from dataclasses import dataclass

# SCI is stated in kWh: the conversion is config's, re-exported here.
from config.units import J_PER_KWH as J_PER_KWH
from config.units import kwh_from_j as kwh_from_j


def operational_g(energy_kwh: float, intensity_g_per_kwh: float) -> float:
    """``E * I``: the emissions from generating the electricity used, in gCO2e."""
    return energy_kwh * intensity_g_per_kwh


def embodied_g(
    total_embodied_g: float,
    reserved_s: float,
    lifetime_s: float,
    resource_share: float = 1.0,
) -> float:
    """``M = TE * (TiR / EL) * (RR / ToR)``: embodied emissions charged, in gCO2e.

    ``resource_share`` is ``RR / ToR``: 1 when the request has the machine to itself.
    """
    if lifetime_s <= 0:
        raise ValueError("lifetime_s must be > 0")
    return total_embodied_g * (reserved_s / lifetime_s) * resource_share


@dataclass(frozen=True, slots=True)
class Sci:
    """One functional unit's SCI, split into its operational and embodied parts."""

    operational_g: float
    """``E * I`` in gCO2e."""
    embodied_g: float
    """``M`` in gCO2e."""

    @property
    def total_g(self) -> float:
        """``E * I + M`` in gCO2e."""
        return self.operational_g + self.embodied_g

    def per(self, units: float | None) -> float | None:
        """SCI per one of ``units`` (e.g. output tokens); None when there are none."""
        if not units or units <= 0:
            return None
        return self.total_g / units


def sci(
    *,
    energy_kwh: float,
    intensity_g_per_kwh: float,
    total_embodied_g: float,
    reserved_s: float,
    lifetime_s: float,
    resource_share: float = 1.0,
) -> Sci:
    """SCI of one unit of work: ``E * I + M``, both parts kept."""
    return Sci(
        operational_g=operational_g(energy_kwh, intensity_g_per_kwh),
        embodied_g=embodied_g(total_embodied_g, reserved_s, lifetime_s, resource_share),
    )
