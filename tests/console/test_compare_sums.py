"""Compare from the per-day sums: for any period (whole days, parts of days at either
end, no start, no end), on both backends, its cells are a fresh count of the rows,
and its per-model figures are ``joulegate report --by model``'s."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from accounting.ledger import iso
from accounting.reports import ReportQuery, build_report
from proxy.console.compare import ALL_TASKS, build_compare
from tests.support.daysums import churn, fill, random_periods
from tests.support.ledger import Store

Cells = dict[tuple[str, str, str, str], tuple[int, float]]
"""(kind, metric, model, task) -> (n, mean)."""


def _expected(rows: list[dict[str, Any]], query: ReportQuery) -> Cells:
    """Compare's cells counted afresh, in Python, from the rows themselves."""
    values: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    since = iso(query.since) if query.since else ""
    until = iso(query.until) if query.until else "~"
    for r in rows:
        if r["failure"] is not None or r["energy_j"] is None or not since <= r["ts"] < until:
            continue
        if query.user is not None and r["user"] != query.user:
            continue
        kind = "estimated" if r["energy_estimated"] else "measured"
        model = r["model_served"] or r["model_requested"] or "(none)"
        tokens = r["completion_tokens"]
        figures = {
            "energy_j": r["energy_j"],
            "sci_g": r["sci_g"],
            "co2e_g_per_1000_queries": None if r["co2e_g"] is None else 1000 * r["co2e_g"],
            "energy_j_per_token": r["energy_j"] / tokens if tokens and tokens > 0 else None,
        }
        for task in (r["task"] or "(none)", ALL_TASKS):
            for metric, value in figures.items():
                if value is not None:
                    values[(kind, metric, model, task)].append(value)
    return {k: (len(v), math.fsum(v) / len(v)) for k, v in values.items()}


def _shown(body: dict[str, Any]) -> Cells:
    """The cells a page draws; every (model, task) it lists has requests behind it."""
    for table in body["kinds"].values():
        counted = {(c["model"], c["task"]) for c in table["metrics"]["energy_j"]["cells"]}
        assert {(r["model"], r["task"]) for r in table["requests"]} == counted
        assert set(table["models"]) == {m for m, _ in counted}
    return {
        (kind, metric, cell["model"], cell["task"]): (cell["n"], cell["mean"])
        for kind, table in body["kinds"].items()
        for metric, figure in table["metrics"].items()
        for cell in figure["cells"]
    }


async def test_compare_is_a_fresh_count_of_the_rows_for_any_period(store: Store) -> None:
    rng = random.Random(11)
    async with store.ledger() as ledger:
        await fill(ledger, rng, 500)
        await churn(ledger, rng, range(500), 150)
        rows = await store.rows()
        for since, until in random_periods(rng):
            for user in (None, "alice"):
                query = ReportQuery(user=user, since=since, until=until)
                shown, expected = _shown(await build_compare(ledger, query)), _expected(rows, query)
                assert shown.keys() == expected.keys(), (since, until, user)
                for cell, (n, mean) in expected.items():
                    assert shown[cell][0] == n, (since, until, user, cell)
                    assert math.isclose(shown[cell][1], mean, rel_tol=1e-9), (since, until, cell)


async def test_compare_gives_joulegate_reports_requests_and_energy_per_model(
    store: Store,
) -> None:
    rng = random.Random(5)
    async with store.ledger() as ledger:
        await fill(ledger, rng, 300)
        await ledger.write("DELETE FROM requests WHERE failure IS NOT NULL OR energy_j IS NULL")
        for since, until in random_periods(rng)[:10]:
            query = ReportQuery(user="bob", since=since, until=until, by="model", unit="J")
            report = await build_report(ledger, query)
            body = await build_compare(ledger, query)
            per_model: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            for table in body["kinds"].values():
                for cell in table["metrics"]["energy_j"]["cells"]:
                    if cell["task"] == ALL_TASKS:
                        per_model[cell["model"]][0] += cell["n"]
                        per_model[cell["model"]][1] += cell["n"] * cell["mean"]
            assert per_model.keys() == {line.key for line in report.lines}
            for line in report.lines:
                assert per_model[line.key][0] == line.requests
                assert math.isclose(per_model[line.key][1], line.energy, rel_tol=1e-9)
