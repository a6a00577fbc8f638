"""``request_day_sums`` on both backends: whatever rows go in, change or go, the
table holds exactly what a grouped query over ``requests`` gives for each day, user,
model, task and kind; a ledger of the previous schema gets it filled from its rows."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from accounting.ledger import Ledger, PostgresLedger
from accounting.ledger.daysums import COUNTS, FLOATS
from tests.support.daysums import churn, fill
from tests.support.ledger import MakeLedger

_SAME_KEY = (
    "substr(ts, 1, 10), user, COALESCE(model_served, model_requested, '(none)'),"
    " COALESCE(task, '(none)'), energy_estimated"
)
DIRECT = (
    f"SELECT {_SAME_KEY}, COUNT(*), COUNT(sci_g), COUNT(co2e_g),"
    " COUNT(CASE WHEN completion_tokens > 0 THEN 1 END), TOTAL(energy_j),"
    " TOTAL(energy_j * energy_j), TOTAL(sci_g), TOTAL(sci_g * sci_g), TOTAL(co2e_g),"
    " TOTAL(co2e_g * co2e_g),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN energy_j / completion_tokens END),"
    " TOTAL(CASE WHEN completion_tokens > 0 THEN"
    " (energy_j / completion_tokens) * (energy_j / completion_tokens) END)"
    " FROM requests WHERE failure IS NULL AND energy_j IS NOT NULL GROUP BY 1, 2, 3, 4, 5"
)
"""Compare's own grouped query (its filter, model, task and kind), per day and user."""
_SUMS = ", ".join(
    [*(f"SUM({c})" for c in COUNTS), *(f"TOTAL({c}) + TOTAL({c}_c)" for c, _ in FLOATS)]
)
KEPT = (
    f"SELECT day, user, model, task, estimated, {_SUMS} FROM request_day_sums"
    " GROUP BY 1, 2, 3, 4, 5 HAVING SUM(n) > 0"
)
DIRECT_ALL = DIRECT.replace(" user,", " '*',", 1).replace("BY 1, 2, 3", "BY 1, 3")
"""The same for everyone (the user column a constant)."""
KEPT_ALL = (
    f"SELECT day, '*', model, task, estimated, {_SUMS} FROM request_day_sums_all"
    " GROUP BY 1, 3, 4, 5 HAVING SUM(n) > 0"
)


async def _by_cell(ledger: Ledger, sql: str) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(r[:5]): list(r[5:]) for r in await ledger.fetchall(sql)}


async def assert_sums_match(ledger: Ledger) -> int:
    """The kept sums, per user and for everyone, equal the grouped query's: counts
    exactly, sums to the last bits two orders of adding differ in. How many cells."""
    cells = 0
    for direct_sql, kept_sql in ((DIRECT, KEPT), (DIRECT_ALL, KEPT_ALL)):
        direct, kept = await _by_cell(ledger, direct_sql), await _by_cell(ledger, kept_sql)
        assert kept.keys() == direct.keys()
        for cell, want in direct.items():
            got = kept[cell]
            assert [int(v) for v in got[:4]] == [int(v) for v in want[:4]], cell
            for name, g, w in zip((c for c, _ in FLOATS), got[4:], want[4:], strict=True):
                assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-9), (cell, name, g, w)
        cells += len(direct)
    return cells


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_day_sums_follow_every_insert_update_and_delete(
    make_ledger: MakeLedger, seed: int
) -> None:
    rng = random.Random(seed)
    async with make_ledger() as ledger:
        await fill(ledger, rng, 400)
        assert await assert_sums_match(ledger) > 20
        await churn(ledger, rng, range(400), 250)
        assert await assert_sums_match(ledger) > 20
        # Every row of a user gone: nothing of theirs is left to show.
        await ledger.write("DELETE FROM requests WHERE user = 'bob'")
        await assert_sums_match(ledger)
        left = await ledger.fetchall(
            "SELECT COUNT(*) FROM (SELECT day FROM request_day_sums WHERE user = 'bob'"
            " GROUP BY day, model, task, estimated HAVING SUM(n) <> 0) AS cells"
        )
        assert left[0][0] == 0
        if not isinstance(ledger, PostgresLedger):  # one writer: the cells are deleted
            rows = await ledger.fetchall("SELECT COUNT(*) FROM request_day_sums WHERE user = 'bob'")
            assert rows[0][0] == 0


async def test_a_ledger_of_the_previous_schema_gets_its_day_sums_from_its_rows(
    make_ledger: MakeLedger,
) -> None:
    rng = random.Random(3)
    async with make_ledger() as ledger:
        await fill(ledger, rng, 300)
        if isinstance(ledger, PostgresLedger):  # back to schema 7, rows kept
            for statement in (
                "DROP TABLE request_day_sums, request_day_sums_all",
                *(
                    f"DROP FUNCTION request_day_sums_{event}() CASCADE"
                    for event in ("insert", "update", "delete", "truncate")
                ),
                "DELETE FROM schema_version WHERE version = 8",
            ):
                await ledger.write(statement)
        else:  # back to schema 11, rows kept
            for statement in (
                "DROP TRIGGER request_day_sums_insert",
                "DROP TRIGGER request_day_sums_update",
                "DROP TRIGGER request_day_sums_delete",
                "DROP TABLE request_day_sums",
                "DROP TABLE request_day_sums_all",
                "PRAGMA user_version = 11",
            ):
                await ledger.write(statement)
        gone = await ledger.fetchall(
            "SELECT COUNT(*) FROM requests WHERE failure IS NULL AND energy_j IS NOT NULL"
        )
        assert gone[0][0] > 200
    async with make_ledger() as ledger:
        assert await assert_sums_match(ledger) > 20
        await churn(ledger, rng, range(300), 100)  # and the triggers are back
        assert await assert_sums_match(ledger) > 20
