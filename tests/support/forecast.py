"""A synthetic forecasting history with known coefficients, and the app that forecasts
from it: shared by the forecast tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from accounting import SqliteLedger
from accounting.forecast.stage import forecast_component
from accounting.ledger.rows import LedgerRow, iso
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from tests.support.ledger import fake_energy

A_J, B_J, C_J = 40.0, 0.02, 0.5
"""The synthetic ledger's true energy coefficients: fixed, per prompt and per output token."""

MODEL = "fake-model"

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def synthetic_rows(
    n: int = 400, *, seed: int = 1, task: str = "code", estimated: bool = False,
    scale: float = 1.0, outliers: int = 6,
) -> list[LedgerRow]:  # fmt: skip
    """Completed rows whose energy is ``A + B*p + C*c`` with 3% noise, a few gross
    outliers (a thermal pause: 10x), and failed rows with absurd energy to be skipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p, c = int(rng.integers(20, 3000)), int(rng.integers(5, 800))
        energy = scale * (A_J + B_J * p + C_J * c) * (1 + rng.normal(0, 0.03))
        if i % (n // outliers) == 0:
            energy *= 10
        rows.append(
            LedgerRow(
                request_id=f"{task}-{estimated}-{seed}-{i}",
                ts=iso(START + dt.timedelta(seconds=i)),
                endpoint="chat/completions",
                model_served=MODEL,
                status=200,
                prompt_tokens=p,
                completion_tokens=c,
                duration_s=0.5 + 0.02 * c,
                energy_j=energy,
                energy_dynamic_j=energy * 0.6,
                energy_estimated=estimated,
                task=task,
            )
        )
    for i in range(20):  # failures: timeouts that burnt energy and produced nothing useful
        rows.append(
            LedgerRow(
                request_id=f"failed-{task}-{seed}-{i}",
                ts=iso(START + dt.timedelta(seconds=n + i)),
                endpoint="chat/completions",
                model_served=MODEL,
                status=504,
                prompt_tokens=100,
                completion_tokens=1,
                energy_j=50_000.0,
                task=task,
                failure="backend_timeout",
            )
        )
    return rows


async def seeded(path: Path, rows: list[LedgerRow]) -> None:
    async with SqliteLedger(path) as ledger:
        await ledger.append_many(rows)


def components() -> list[Any]:
    return [
        accounting_resource,
        auth_component,
        fake_energy,
        forecast_component(),
        record_component,
    ]


def forecast_body(**more: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "w" * 4000}], **more}


def alias_rows(served: str, n: int = 3, start: int = 0) -> list[LedgerRow]:
    """Completed requests for ``alias`` answered under ``served`` (and a failed one that
    must not count)."""
    rows = [LedgerRow(request_id=f"alias-{served}-{start + i}", ts=iso(START), status=200,
                      model_requested="alias", model_served=served) for i in range(n)]  # fmt: skip
    rows.append(LedgerRow(request_id=f"alias-failed-{served}-{start}", ts=iso(START), status=502,
                          model_requested="alias", model_served="nowhere",
                          failure="backend_error"))  # fmt: skip
    return rows
