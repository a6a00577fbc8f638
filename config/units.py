"""Energy units, in one place: joules inside, Wh and kWh only at the edges."""

from __future__ import annotations

from typing import Literal

EnergyUnit = Literal["J", "Wh", "kWh"]

J_PER_WH = 3600.0
J_PER_KWH = 3_600_000.0
J_PER: dict[str, float] = {"J": 1.0, "Wh": J_PER_WH, "kWh": J_PER_KWH}
"""Joules in one of each unit a report or a budget is given in."""


def wh_from_j(energy_j: float) -> float:
    """Joules as watt-hours."""
    return energy_j / J_PER_WH


def kwh_from_j(energy_j: float) -> float:
    """Joules as kilowatt-hours (what grid carbon intensity is per)."""
    return energy_j / J_PER_KWH
