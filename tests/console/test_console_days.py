"""Usage keeps whole past days: the figures equal the uncached reports', and a row
landing late in a past day is counted."""

from __future__ import annotations

import math
from pathlib import Path

from accounting import SqliteLedger
from accounting.reports import Line, build_report, parse_query
from bench.ledger import generate_sqlite
from proxy.console.data import day_report
from proxy.console.daycache import DayCache


async def test_kept_days_give_the_reports_figures_and_late_rows_count(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path):
        pass
    generate_sqlite(path, 3000)  # 2025-01 to 2025-03, 50 users: every day is over
    usage: DayCache[Line] = DayCache()
    async with SqliteLedger(path) as ledger:
        periods = (
            {"since": "2025-01-01", "until": "2025-03-31", "by": "day"},
            {"user": "user00", "month": "2025-02", "by": "day", "unit": "J"},
        )
        for params in periods:
            query = parse_query(params)
            expected = (await build_report(ledger, query)).to_json()
            assert (await day_report(ledger, query, usage)).to_json() == expected
            assert (await day_report(ledger, query, usage)).to_json() == expected  # kept
        query = parse_query({"month": "2025-02", "by": "day"})
        before = (await day_report(ledger, query, usage)).to_json()["totals"]
        late = (await ledger.fetchall("SELECT * FROM requests WHERE ts LIKE '2025-02-10%'"))[0]
        await ledger.write(
            "INSERT INTO requests (request_id, ts, user, endpoint, energy_j, co2e_g)"
            " VALUES ('late-1', ?, 'user00', 'chat/completions', 3600.0, 1.0)",
            (late["ts"],),
        )
        after = (await day_report(ledger, query, usage)).to_json()["totals"]
        fresh = (await build_report(ledger, query)).to_json()["totals"]
    assert after == fresh and after["requests"] == before["requests"] + 1
    assert math.isclose(after["energy_wh"], before["energy_wh"] + 1.0)
