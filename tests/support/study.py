"""Shared by the study tests: rows built by hand, and a stage standing in for the meters
and carbon stages with a different cost per model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from accounting.study.dataset import StudyRow
from proxy.context import AppContext
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from tests.support.figures import record_fake_measurement

COST_J_PER_TOKEN = {"m1": 0.25, "m2": 0.75}


def row(model: str, task: str, energy_j: float, i: int, *, tokens: int = 4,
        finish: str = "stop") -> StudyRow:  # fmt: skip
    """One estimated row with operational and embodied parts of its SCI."""
    return StudyRow(
        model=model, task=task, prompt_id=f"{task}-{i:03d}", repeat=1, prompt="p",
        response="r", prompt_tokens=3, completion_tokens=tokens, duration_s=0.5, client_s=0.6,
        energy_j=energy_j, energy_dynamic_j=energy_j / 2, estimated=True,
        sci_operational_g=energy_j * 1e-4, sci_embodied_g=2e-5, sci_g=energy_j * 1e-4 + 2e-5,
        co2e_g=energy_j * 1e-4, finish_reason=finish, max_tokens=4, request_id=f"{model}{i}",
        ts="2026-01-01T00:00:00Z",
    )  # fmt: skip


class ModelEnergy(Stage):
    """Energy 0.5 J + a per-model cost per output token (m2 three times m1's), an
    estimate's range of ±20%, SCI split into operational and embodied parts."""

    name = "study-energy"

    async def on_finished(self, ex: Exchange) -> None:
        if not ex.gated:
            return
        tokens = ex.completion_tokens or 0
        energy_j = 0.5 + COST_J_PER_TOKEN.get(ex.model_requested or "", 0.5) * tokens
        record_fake_measurement(
            ex, energy_j=energy_j, dynamic_j=energy_j - 0.5, components_j={"cpu": energy_j},
            estimated=True, idle_power_w=5.0,
        )  # fmt: skip
        assert ex.measurement is not None
        ex.measurement.energy_low_j, ex.measurement.energy_high_j = 0.8 * energy_j, 1.2 * energy_j
        ex.measurement.estimate_model = "ccf-vcpu average + 0.392 W/GB"
        co2e_g = energy_j * 400.0 / 3.6e6
        ex.carbon = CarbonFigures(
            source="static", intensity_g_per_kwh=400.0, co2e_g=co2e_g, sci_operational_g=co2e_g,
            sci_embodied_g=co2e_g / 10, sci_g=co2e_g + co2e_g / 10,
            embodied_model="vm-share: 2 of 96 host vCPUs x generic server 1,000 kg = 20.8 kg",
        )  # fmt: skip


@contextlib.asynccontextmanager
async def model_energy(ctx: AppContext) -> AsyncIterator[Stage]:
    """The :class:`ModelEnergy` component."""
    yield ModelEnergy()
