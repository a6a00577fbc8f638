"""The forecast's refit straight from the ledger's rows, on numpy columns.

A refit reads up to a million :data:`~accounting.forecast.SAMPLE_SQL` rows. Building
a :class:`~accounting.forecast.Sample` per row and grouping them in Python cost most
of its time; here the rows become columns once and are grouped by model and task
with ``np.unique`` and a stable ``argsort``, giving the same fits as
:func:`~accounting.forecast.fit_samples`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from accounting.forecast import ALL_TASKS, MIN_TOKEN_ROWS, FitSet, ModelFit, fit_arrays
from accounting.schema import iso


def _groups(key: npt.NDArray[np.int64]) -> Iterable[tuple[int, npt.NDArray[np.intp]]]:
    """Each distinct ``key`` and the row indices that have it, in row order."""
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.diff(key[order])) + 1
    for idx in np.split(order, starts):
        if len(idx):
            yield int(key[idx[0]]), idx


def _factorize(values: Iterable[object]) -> tuple[list[object], npt.NDArray[np.int64]]:
    """The distinct values (first-seen order) and each value's index into them: a dict
    look-up per row, several times faster than ``np.unique`` on Python strings."""
    codes: dict[object, int] = {}
    index = np.fromiter((codes.setdefault(v, len(codes)) for v in values), dtype=np.int64)
    return list(codes), index


def fit_rows(rows: Sequence[Sequence[object]], now: dt.datetime | None = None) -> FitSet:
    """:func:`fit_samples` straight from :data:`SAMPLE_SQL` rows, on columns.

    A refit reads up to a million rows: grouping them by model and task with numpy
    instead of a :class:`Sample` per row is what keeps it within seconds.
    """
    fitted_at = iso(now or dt.datetime.now(dt.UTC))
    if not rows:
        return FitSet(fitted_at=fitted_at)
    cols = list(zip(*rows, strict=True))
    models, mi = _factorize(cols[0])
    tasks, ti = _factorize(t or "(none)" for t in cols[1])
    est = np.array(cols[2], dtype=np.int64) != 0
    p, c = np.array(cols[3], dtype=np.float64), np.array(cols[4], dtype=np.float64)
    x = np.column_stack([np.ones_like(p), p, c])
    e = np.array(cols[5], dtype=np.float64)
    ed, d = (np.array(cols[i], dtype=np.float64) for i in (6, 7))  # None -> NaN
    mi = mi.astype(np.int64)
    fits: dict[tuple[str, bool], ModelFit] = {}
    for key, idx in _groups(mi * 2 + est):
        model, estimated = str(models[key // 2]), bool(key % 2)
        fit = fit_arrays(model, estimated, x[idx], e[idx], ed[idx], d[idx], fitted_at)
        if fit is not None:
            fits[(model, estimated)] = fit
    tokens: dict[tuple[str, str], tuple[float, float, float]] = {}
    n_tasks = len(tasks)
    groups = [((str(models[k // n_tasks]), str(tasks[k % n_tasks])), idx)
              for k, idx in _groups(mi * n_tasks + ti.astype(np.int64))]  # fmt: skip
    groups += [((str(models[k]), ALL_TASKS), idx) for k, idx in _groups(mi)]
    for name, idx in groups:
        if len(idx) >= MIN_TOKEN_ROWS:
            q10, q50, q90 = (float(v) for v in np.quantile(c[idx], [0.1, 0.5, 0.9]))
            tokens[name] = (q10, q50, q90)
    return FitSet(fits, tokens, fitted_at, len(rows))
