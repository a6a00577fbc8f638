"""Compare: the model x task table from the ledger, in the shape of a study's
``summary.json`` so that one page script draws both.

Each cell is the mean over that model's and task's completed requests (no
``failure``, energy known) of SCI per request, energy per request, energy per output
token and gCO2e per 1,000 queries, with its 95% t-interval and the number of
requests behind it. Measured and estimated rows are kept apart (``kinds``): an
estimate is a model of the machine, not a reading of it. A model's ``(all)`` cell
adds up every task; its request count and energy are the ones ``joulegate report
--by model`` gives for the same rows.

The sums come from one grouped query over the same period filter as the reports
(``ts`` range, and the user for a non-admin), so a month is one range scan.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from accounting.ledger import Ledger
from accounting.ledger.rows import iso, utcnow
from accounting.reports import ReportQuery
from accounting.study.stats import t_quantile
from proxy.console.daycache import DAY, DayCache, whole_days

ALL_TASKS = "(all)"
_SQL = (
    "SELECT {day}COALESCE(model_served, model_requested, '(none)') AS m, COALESCE(task, '(none)')"
    " AS t, energy_estimated AS e, COUNT(*), TOTAL(energy_j), TOTAL(energy_j * energy_j),"
    " COUNT(sci_g), TOTAL(sci_g), TOTAL(sci_g * sci_g),"
    " COUNT(co2e_g), TOTAL(co2e_g), TOTAL(co2e_g * co2e_g),"
    " COUNT(CASE WHEN completion_tokens > 0 THEN 1 END),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN energy_j / completion_tokens END),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN"
    " (energy_j / completion_tokens) * (energy_j / completion_tokens) END)"
    " FROM requests WHERE {where} AND failure IS NULL AND energy_j IS NOT NULL"
    " GROUP BY {day_group}m, t, e"
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
    where, params = query.where()
    rows = await ledger.fetchall(_SQL.format(day="", day_group="", where=where), params)
    return {(str(r[0]), str(r[1]), int(r[2])): [float(v) for v in r[3:]] for r in rows}


async def _sums_by_day(ledger: Ledger, query: ReportQuery) -> dict[str, Sums]:
    where, params = query.where()
    sql = _SQL.format(day="substr(ts, 1, 10) AS d, ", day_group="d, ", where=where)
    out: dict[str, Sums] = defaultdict(dict)
    for r in await ledger.fetchall(sql, params):
        out[str(r[0])][(str(r[1]), str(r[2]), int(r[3]))] = [float(v) for v in r[4:]]
    return out


async def period_sums(
    ledger: Ledger, query: ReportQuery, cache: DayCache[Sums] | None, now: dt.datetime
) -> list[Sums]:
    """The period's sums: kept whole days plus the rest from the ledger."""
    split = None
    if cache is not None:
        first = None
        if query.since is None:
            where, params = ReportQuery(user=query.user).where()
            rows = await ledger.fetchall(f"SELECT MIN(ts) FROM requests WHERE {where}", params)  # noqa: S608
            first = rows[0][0] if rows else None
            if first is None:
                return []
        split = whole_days(query.since, query.until, now, first)
    if cache is None or split is None:
        return [await _sums(ledger, query)]
    days, open_from = split

    async def compute(first_day: str, last_day: str) -> dict[str, Sums]:
        since = dt.datetime.fromisoformat(first_day).replace(tzinfo=dt.UTC)
        until = dt.datetime.fromisoformat(last_day).replace(tzinfo=dt.UTC) + DAY
        return await _sums_by_day(ledger, ReportQuery(user=query.user, since=since, until=until))

    out = await cache.get(ledger, query.user, days, compute, dict)
    if query.until is None or query.until > open_from:
        today = ReportQuery(user=query.user, since=open_from, until=query.until)
        out.append(await _sums(ledger, today))
    return out


async def build_compare(
    ledger: Ledger,
    query: ReportQuery,
    cache: DayCache[Sums] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The Compare table for ``query``'s user and period (its ``by`` and ``unit`` unused);
    whole days before today come from ``cache`` when given."""
    kinds: dict[str, dict[tuple[str, str], _Sums]] = {
        "measured": defaultdict(_Sums),
        "estimated": defaultdict(_Sums),
    }
    for sums in await period_sums(ledger, query, cache, now or utcnow()):
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
