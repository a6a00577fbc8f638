"""Compare: the model x task table from the ledger, in the shape of a study's
``summary.json`` so that one page script draws both.

Each cell is the mean over that model's and task's completed requests (no
``failure``, energy known) of SCI per request, energy per request, energy per output
token and gCO2e per 1,000 queries, with its 95% t-interval and the number of
requests behind it. Measured and estimated rows are kept apart (``kinds``): an
estimate is a model of the machine, not a reading of it. A model's ``(all)`` cell
adds up every task; its request count and energy are the ones ``joulegate report
--by model`` gives for the same rows.

The sums are those of one grouped query over the same period filter as the reports
(``ts`` range, and the user for a non-admin): ``_SQL``. The database keeps them per
day (:mod:`accounting.ledger.daysums`, triggers on ``requests``), so a period's whole
UTC days are read from that summary, a few rows a day, and only a part of a day at
either end of the period is summed from ``requests``.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from accounting.ledger import Ledger
from accounting.ledger.daysums import READ_ALL_SUMS, READ_USER_SUMS
from accounting.ledger.rows import iso
from accounting.reports import ReportQuery
from accounting.study.stats import t_quantile
from proxy.console.days import split

ALL_TASKS = "(all)"
_SQL = (
    "SELECT COALESCE(model_served, model_requested, '(none)') AS m, COALESCE(task, '(none)')"
    " AS t, energy_estimated AS e, COUNT(*), TOTAL(energy_j), TOTAL(energy_j * energy_j),"
    " COUNT(sci_g), TOTAL(sci_g), TOTAL(sci_g * sci_g),"
    " COUNT(co2e_g), TOTAL(co2e_g), TOTAL(co2e_g * co2e_g),"
    " COUNT(CASE WHEN completion_tokens > 0 THEN 1 END),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN energy_j / completion_tokens END),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN"
    " (energy_j / completion_tokens) * (energy_j / completion_tokens) END)"
    " FROM requests WHERE {where} AND failure IS NULL AND energy_j IS NOT NULL"
    " GROUP BY m, t, e"
)
Sums = dict[tuple[str, str, int], list[float]]
"""One day's (or one period's) sums per (model, task, estimated)."""
METRICS: tuple[tuple[str, str, str, int, float], ...] = (
    # key, title, unit, offset of (n, sum, sum of squares) in a row, scale
    ("sci_g", "SCI per request", "g", 3, 1.0),
    ("energy_j", "Energy per request", "J", 0, 1.0),
    ("energy_j_per_token", "Energy per output token", "J/token", 9, 1.0),
    ("co2e_g_per_1000_queries", "gCO2e per 1,000 queries", "g", 6, 1000.0),
)


@dataclass(slots=True)
class _Sums:
    """Additive sums of one cell: (n, sum, sum of squares) per figure."""

    values: list[float] = field(default_factory=lambda: [0.0] * 12)

    def add(self, row: list[float]) -> None:
        for i, v in enumerate(row):
            self.values[i] += v


@functools.lru_cache(maxsize=512)
def _t95(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval (cached per df)."""
    return t_quantile(0.975, min(df, 10_000))


def estimate(n: float, total: float, squares: float, scale: float = 1.0) -> dict[str, Any]:
    """The mean of ``n`` values from their sum and sum of squares, with its 95%
    t-interval (no interval below two values), times ``scale``."""
    count = int(n)
    mean = total / count
    low = high = mean
    if count >= 2:
        var = max(0.0, (squares - count * mean * mean) / (count - 1))
        half = _t95(count - 1) * math.sqrt(var / count)
        low, high = mean - half, mean + half
    return {"n": count, "mean": mean * scale, "ci95_low": low * scale, "ci95_high": high * scale}


def _kind_json(cells: dict[tuple[str, str], _Sums]) -> dict[str, Any]:
    models = sorted({m for m, _ in cells})
    tasks = sorted({t for _, t in cells if t != ALL_TASKS})
    metrics: dict[str, Any] = {}
    for key, title, unit, at, scale in METRICS:
        out = []
        for (model, task), sums in sorted(cells.items()):
            n, total, squares = sums.values[at : at + 3]
            if n >= 1:
                out.append({"model": model, "task": task,
                            **estimate(n, total, squares, scale)})  # fmt: skip
        metrics[key] = {"title": title, "unit": unit, "cells": out}
    return {
        "models": models,
        "tasks": [*tasks, ALL_TASKS],
        "metrics": metrics,
        "requests": [
            {"model": m, "task": t, "n": int(s.values[0])} for (m, t), s in sorted(cells.items())
        ],
    }


async def _sums(ledger: Ledger, query: ReportQuery) -> Sums:
    """The period's sums straight from ``requests`` (a part of a day: a small range)."""
    where, params = query.where()
    return _keyed(await ledger.fetchall(_SQL.format(where=where), params))


def _keyed(rows: list[Any]) -> Sums:
    return {(str(r[0]), str(r[1]), int(r[2])): [float(v) for v in r[3:]] for r in rows}


async def period_sums(ledger: Ledger, query: ReportQuery) -> list[Sums]:
    """The period's sums: its whole UTC days from the day sums (the user's, or
    everyone's), the part of a day at either end from ``requests``."""
    parts = split(query)
    out = [await _sums(ledger, q) for q in (parts.before, parts.after) if q is not None]
    if parts.days is not None:
        where, params = parts.days
        read = READ_ALL_SUMS if query.user is None else READ_USER_SUMS
        out.append(_keyed(await ledger.fetchall(read.format(where=where), params)))
    return out


async def build_compare(ledger: Ledger, query: ReportQuery) -> dict[str, Any]:
    """The Compare table for ``query``'s user and period (its ``by`` and ``unit`` unused)."""
    kinds: dict[str, dict[tuple[str, str], _Sums]] = {
        "measured": defaultdict(_Sums),
        "estimated": defaultdict(_Sums),
    }
    for sums in await period_sums(ledger, query):
        for (model, task, estimated), values in sums.items():
            kind = "estimated" if estimated else "measured"
            kinds[kind][(model, task)].add(values)
            kinds[kind][(model, ALL_TASKS)].add(values)
    return {
        "object": "energy.compare",
        "user": query.user,
        "since": iso(query.since) if query.since else None,
        "until": iso(query.until) if query.until else None,
        "interval": "mean ± 95% CI (t)",
        "kinds": {kind: _kind_json(cells) for kind, cells in kinds.items() if cells},
    }
