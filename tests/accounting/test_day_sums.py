"""``request_day_sums`` on both backends: whatever rows go in, change or go, the
table holds exactly what a grouped query over ``requests`` gives for each day, user,
model, task and kind; a ledger of the previous schema gets it filled from its rows."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from accounting.ledger import Ledger, PostgresLedger
from accounting.ledger.daysums import SUMS
from tests.support.daysums import churn, fill
from tests.support.ledger import MakeLedger

_CELL = (
    "substr(ts, 1, 10), user, COALESCE(model_served, model_requested, '(none)'),"
    " COALESCE(task, '(none)'), energy_estimated"
)
_PER_TOKEN = "CASE WHEN completion_tokens > 0 THEN energy_j / completion_tokens END"
_FORECASTED = "forecast_energy_j IS NOT NULL AND energy_j > 0 AND failure IS NULL"
COMPARE = (
    f"SELECT {_CELL}, COUNT(*), TOTAL(energy_j), TOTAL(energy_j * energy_j),"
    " COUNT(sci_g), TOTAL(sci_g), TOTAL(sci_g * sci_g),"
    " COUNT(co2e_g), TOTAL(co2e_g), TOTAL(co2e_g * co2e_g),"
    f" COUNT({_PER_TOKEN}), TOTAL({_PER_TOKEN}), TOTAL(({_PER_TOKEN}) * ({_PER_TOKEN}))"
    " FROM requests WHERE failure IS NULL AND energy_j IS NOT NULL GROUP BY 1, 2, 3, 4, 5"
)
"""Compare's grouped query (its filter, model, task and kind), per day and user."""
REPORT = (
    f"SELECT {_CELL}, COUNT(*), COUNT(failure), TOTAL(prompt_tokens),"
    " TOTAL(completion_tokens), TOTAL(duration_s), TOTAL(energy_j), TOTAL(energy_dynamic_j),"
    f" TOTAL(co2e_g), TOTAL(CASE WHEN {_FORECASTED} THEN"
    " ABS(forecast_energy_j - energy_j) / energy_j END),"
    f" COUNT(CASE WHEN {_FORECASTED} THEN 1 END) FROM requests GROUP BY 1, 2, 3, 4, 5"
)
"""``joulegate report``'s sums over every row, per day, user, model, task and kind."""


def _kept(names: tuple[str, ...], having: str, *, everyone: bool) -> str:
    how = {name: kind for name, kind, _ in SUMS}
    sums = ", ".join(
        f"TOTAL({n}) + TOTAL({n}_c)" if how[n] == "float" else f"SUM({n})" for n in names
    )
    if everyone:
        return (
            f"SELECT day, '*', model, task, estimated, {sums} FROM request_day_sums_all"
            f" GROUP BY 1, 3, 4, 5 HAVING SUM({having}) > 0"
        )
    return (
        f"SELECT day, user, model, task, estimated, {sums} FROM request_day_sums"
        f" GROUP BY 1, 2, 3, 4, 5 HAVING SUM({having}) > 0"
    )


_COMPARED = ("n", "energy_j", "energy_j_sq", "sci_n", "sci_g", "sci_g_sq", "co2e_n", "co2e_g",
             "co2e_g_sq", "token_n", "j_per_token", "j_per_token_sq")  # fmt: skip
_REPORTED = ("requests", "failed", "prompt_tokens", "completion_tokens", "duration_s",
             "all_energy_j", "energy_dynamic_j", "all_co2e_g", "forecast_ape",
             "forecast_rows")  # fmt: skip


def _everyone(sql: str) -> str:
    """The same query for everyone (the user column a constant)."""
    return sql.replace(" user,", " '*',", 1).replace("BY 1, 2, 3", "BY 1, 3")


async def _by_cell(ledger: Ledger, sql: str) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(r[:5]): list(r[5:]) for r in await ledger.fetchall(sql)}


async def assert_sums_match(ledger: Ledger) -> int:
    """The kept sums, per user and for everyone, equal the grouped queries': counts
    exactly, sums to the last bits two orders of adding differ in. How many cells."""
    how = {name: kind for name, kind, _ in SUMS}
    cells = 0
    for direct_sql, names, having in ((COMPARE, _COMPARED, "n"), (REPORT, _REPORTED, "requests")):
        for everyone in (False, True):
            direct = await _by_cell(ledger, _everyone(direct_sql) if everyone else direct_sql)
            kept = await _by_cell(ledger, _kept(names, having, everyone=everyone))
            assert kept.keys() == direct.keys()
            for cell, want in direct.items():
                for name, g, w in zip(names, kept[cell], want, strict=True):
                    if how[name] == "float":
                        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-9), (cell, name, g, w)
                    else:
                        assert int(g) == int(w), (cell, name)
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
