"""Fakes of the meters' result, recorded the way the real meters stage records it."""

from __future__ import annotations

from proxy.exchange import Exchange
from proxy.figures import ComponentEnergy, WindowEnergy


def record_fake_measurement(
    ex: Exchange,
    *,
    energy_j: float | None,
    dynamic_j: float | None,
    components_j: dict[str, float | None],
    meter: str = "fake",
    estimated: bool = False,
    idle_power_w: float | None = None,
    duration_s: float = 1.0,
) -> None:
    """Record a measurement of ``energy_j`` split as ``components_j`` on ``ex``."""
    start_s = ex.window.admitted_s or 0.0
    ex.record_measurement(
        WindowEnergy(
            start_s=start_s,
            end_s=start_s + duration_s,
            components={
                c: ComponentEnergy(
                    component=c,
                    meter=meter,
                    energy_j=e,
                    dynamic_j=None,
                    idle_power_w=None,
                    estimated=estimated,
                    low_resolution=False,
                    reason=None if e is not None else "meter failed",
                )
                for c, e in components_j.items()
            },
            energy_j=energy_j,
            dynamic_j=dynamic_j,
            idle_power_w=idle_power_w,
            meter=meter,
            estimated=estimated,
            low_resolution=False,
            exclusive=True,
        )
    )
