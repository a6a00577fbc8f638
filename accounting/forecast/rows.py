"""The forecast's refit straight from the ledger's rows, on numpy columns.

A refit reads up to a million :data:`~accounting.forecast.SAMPLE_SQL` rows. Building
a :class:`~accounting.forecast.Sample` per row and grouping them in Python cost most
of its time; here the rows become columns once (one C-level pass per column, no
transposition of the rows) and are grouped by model and task with a stable
``argsort``, giving the same fits as :func:`~accounting.forecast.fit_samples`.

Both ledgers hand their rows here (:meth:`accounting.ledger.SqliteLedger.fetch_converted`
runs this in the thread that read them), so the fits are the same on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from accounting.forecast.fit import ALL_TASKS, MIN_TOKEN_ROWS, FitSet, ModelFit, fit_arrays
from accounting.forecast.robust_fit import FloatArray
from accounting.ledger.rows import iso

IntArray = npt.NDArray[np.int64]
NO_TASK = "(none)"
"""The token-history key of rows without a task (never a task name: those are a-z0-9_-)."""


@dataclass(frozen=True, slots=True)
class SampleColumns:
    """:data:`~accounting.forecast.SAMPLE_SQL` rows as columns, names factorized."""

    models: list[str]
    model_index: IntArray
    """Each row's index into :attr:`models`."""
    tasks: list[str]
    task_index: IntArray
    """Each row's index into :attr:`tasks` (:data:`NO_TASK` for rows without one)."""
    estimated: npt.NDArray[np.bool_]
    prompt_tokens: FloatArray
    completion_tokens: FloatArray
    energy_j: FloatArray
    energy_dynamic_j: FloatArray
    """NaN where a row has none (as :attr:`duration_s`)."""
    duration_s: FloatArray

    def __len__(self) -> int:
        return len(self.energy_j)


def _factorize(values: Sequence[object]) -> tuple[list[object], IntArray]:
    """The distinct values (first-seen order) and each value's index into them: two
    C-level passes (``dict.fromkeys``, then a look-up per row), several times faster
    than ``np.unique`` on Python strings."""
    names = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(names)}
    return names, np.fromiter(map(index.__getitem__, values), np.int64, len(values))


def columns_from_rows(rows: Sequence[Sequence[object]]) -> SampleColumns:
    """The columns of :data:`~accounting.forecast.SAMPLE_SQL` rows (SQLite tuples or
    asyncpg records: both index by position)."""
    n = len(rows)

    def column(i: int) -> Iterator[object]:
        return map(itemgetter(i), rows)

    def floats(i: int) -> FloatArray:
        return np.fromiter(column(i), np.float64, n)

    def nullable(i: int) -> FloatArray:
        return np.array(list(column(i)), dtype=np.float64)  # None -> NaN

    models, mi = _factorize(list(column(0)))
    raw_tasks, ti = _factorize(list(column(1)))
    # None and "" are both "no task": one name, so one token history.
    tasks = list(dict.fromkeys(str(t or NO_TASK) for t in raw_tasks))
    if len(tasks) < len(raw_tasks):
        ti = np.array([tasks.index(str(t or NO_TASK)) for t in raw_tasks], np.int64)[ti]
    return SampleColumns(
        [str(m) for m in models],
        mi,
        tasks,
        ti,
        np.fromiter(column(2), np.int64, n) != 0,
        floats(3),
        floats(4),
        floats(5),
        nullable(6),
        nullable(7),
    )


def _groups(key: IntArray) -> Iterator[tuple[int, npt.NDArray[np.intp]]]:
    """Each distinct ``key`` and the row indices that have it, in row order."""
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.diff(key[order])) + 1
    for idx in np.split(order, starts):
        if len(idx):
            yield int(key[idx[0]]), idx


def fit_columns(cols: SampleColumns, now: dt.datetime | None = None) -> FitSet:
    """:func:`~accounting.forecast.fit_samples` on columns (blocking: use a thread)."""
    fitted_at = iso(now or dt.datetime.now(dt.UTC))
    if not len(cols):
        return FitSet(fitted_at=fitted_at)
    p, c, mi = cols.prompt_tokens, cols.completion_tokens, cols.model_index
    x = np.column_stack([np.ones_like(p), p, c])
    fits: dict[tuple[str, bool], ModelFit] = {}
    for key, idx in _groups(mi * 2 + cols.estimated):
        model, estimated = cols.models[key // 2], bool(key % 2)
        fit = fit_arrays(model, estimated, x[idx], cols.energy_j[idx],
                         cols.energy_dynamic_j[idx], cols.duration_s[idx], fitted_at)  # fmt: skip
        if fit is not None:
            fits[(model, estimated)] = fit
    n_tasks = len(cols.tasks)
    groups = [((cols.models[k // n_tasks], cols.tasks[k % n_tasks]), idx)
              for k, idx in _groups(mi * n_tasks + cols.task_index)]  # fmt: skip
    groups += [((cols.models[k], ALL_TASKS), idx) for k, idx in _groups(mi)]
    tokens: dict[tuple[str, str], tuple[float, float, float]] = {}
    for name, idx in groups:
        if len(idx) >= MIN_TOKEN_ROWS:
            q10, q50, q90 = (float(v) for v in np.quantile(c[idx], [0.1, 0.5, 0.9]))
            tokens[name] = (q10, q50, q90)
    return FitSet(fits, tokens, fitted_at, len(cols))


def fit_rows(rows: Sequence[Sequence[object]], now: dt.datetime | None = None) -> FitSet:
    """:func:`fit_columns` on :data:`~accounting.forecast.SAMPLE_SQL` rows."""
    return fit_columns(columns_from_rows(rows), now)
