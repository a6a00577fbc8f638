"""How good the forecasts are: fit on each model's earlier rows, score on its later ones.

``joulegate forecast --evaluate`` reads the ledger's completed rows in time order
and splits **each model's** rows at :data:`TRAIN_SHARE` (one cut over the whole
ledger left a model benched last without a single test row). Every (model, task)
cell is scored with the R² of the energy fit given the actual tokens and the
mean absolute percentage error of the forecast made before the fact. A cell with
fewer than :data:`MIN_TEST_ROWS` test rows gets no R² (three rows gave -24,742,
printed without a word) and a warning; its MAPE is still shown, flagged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from accounting.forecast.fit import FitSet, Sample

TRAIN_SHARE = 0.7
"""The share of each model's rows (the earliest) the fit is made on."""
MIN_TEST_ROWS = 10
"""Fewer test rows than this in a cell and its R² is withheld, with a warning."""

Item = tuple[Sample, int | None]
"""A completed row and its request's ``max_tokens``."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """How a fit on earlier rows did on later ones, for one (model, task)."""

    model: str
    task: str
    test_rows: int
    r2_actual_tokens: float | None
    """R^2 of the energy fit given each request's actual tokens (None: no fit, or
    fewer than :data:`MIN_TEST_ROWS` test rows)."""
    mape_pct: float | None
    """Mean absolute percentage error of the before-the-fact forecast (None: none made)."""
    forecast_rows: int
    warning: str | None = None
    """Why the cell's figures should not be trusted (too few test rows), if so."""


def split_by_model(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """Each model's earliest :data:`TRAIN_SHARE` of rows to train on, the rest to test
    (``items`` in time order); a model with two rows or more always has a test row."""
    by_model: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_model[item[0].model].append(item)
    train: list[Item] = []
    test: list[Item] = []
    for rows in by_model.values():
        cut = min(int(len(rows) * TRAIN_SHARE), len(rows) - 1)
        train += rows[:cut]
        test += rows[cut:]
    return train, test


def evaluate(fs: FitSet, test: Sequence[Item]) -> list[Evaluation]:
    """Score ``fs`` on later rows (each with its request's ``max_tokens``), per (model, task)."""
    groups: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in test:
        groups[(item[0].model, item[0].task or "(none)")].append(item)
    out: list[Evaluation] = []
    for (model, task), items in sorted(groups.items()):
        y = np.array([s.energy_j for s, _ in items])
        fit = fs.fit_for(model)
        few = len(items) < MIN_TEST_ROWS
        r2 = None
        if fit is not None and not few:
            f = np.array([fit.energy.at(s.prompt_tokens, s.completion_tokens) for s, _ in items])
            total = float(np.sum((y - y.mean()) ** 2))
            r2 = 1.0 - float(np.sum((y - f) ** 2)) / total if total > 0 else None
        errors = []
        for s, cap in items:
            e = fs.predict(model, s.task, s.prompt_tokens, cap).energy_j
            if e is not None and s.energy_j > 0:
                errors.append(abs(e.p50 - s.energy_j) / s.energy_j)
        mape = 100.0 * float(np.mean(errors)) if errors else None
        warning = None
        if few:
            warning = (f"{len(items)} test rows, fewer than {MIN_TEST_ROWS}: no R², "
                       "and the MAPE is anecdotal")  # fmt: skip
        out.append(Evaluation(model, task, len(items), r2, mape, len(errors), warning))
    return out
