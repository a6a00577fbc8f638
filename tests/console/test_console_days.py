"""Usage from the per-day sums: for any period, on both backends, after rows were
added, replayed, changed and deleted, its per-day lines and totals are ``joulegate
report --by day``'s (counts exactly, sums to the last bits two orders of adding
differ in)."""

from __future__ import annotations

import math
import random
from typing import Any

from accounting.reports import ReportQuery, build_report
from proxy.console.data import day_report
from tests.support.daysums import churn, fill, random_periods
from tests.support.ledger import Store


def _same(got: Any, want: Any) -> bool:
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(got, float) or isinstance(want, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return bool(got == want)


async def test_usage_gives_the_reports_days_and_totals_for_any_period(store: Store) -> None:
    rng = random.Random(13)
    async with store.ledger() as ledger:
        await fill(ledger, rng, 500)
        await churn(ledger, rng, range(500), 150)
        for since, until in random_periods(rng):
            for user, unit in ((None, "Wh"), ("alice", "J")):
                query = ReportQuery(user=user, since=since, until=until, by="day", unit=unit)
                got = (await day_report(ledger, query)).to_json()
                want = (await build_report(ledger, query)).to_json()
                assert _same(got, want), (since, until, user, got, want)
                assert got["totals"]["requests"] == sum(g["requests"] for g in want["groups"])


async def test_a_row_landing_in_a_past_day_counts_at_once(store: Store) -> None:
    rng = random.Random(17)
    async with store.ledger() as ledger:
        await fill(ledger, rng, 200)
        query = ReportQuery(user="bob", by="day", unit="J")
        before = (await day_report(ledger, query)).to_json()["totals"]
        await ledger.write(
            "INSERT INTO requests (request_id, ts, user, endpoint, energy_j, co2e_g)"
            " VALUES ('late-1', '2025-03-02T23:59:59.999999Z', 'bob', 'chat/completions',"
            " 3600.0, 1.0)"
        )
        after = (await day_report(ledger, query)).to_json()["totals"]
    assert after["requests"] == before["requests"] + 1
    assert math.isclose(after["energy_j"], before["energy_j"] + 3600.0)
