"""The ledger contract on both backends: keys, budgets and reports on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from accounting.auth import KeyStore
from accounting.budgets import Budget, BudgetBook
from accounting.ledger.rows import row_from_sql
from accounting.reports import build_report, parse_query
from tests.support.ledger import MakeLedger
from tests.support.rows import at, generated, rec


async def test_keys_are_created_found_and_revoked(make_ledger: MakeLedger) -> None:
    async with make_ledger() as ledger:
        store = KeyStore(ledger)
        key, info = await store.create("alice", admin=True)
        await store.load()
    async with make_ledger() as ledger:
        store = KeyStore(ledger)
        await store.load()
        assert await store.revoke(info.prefix) == 1
        assert key.startswith("jg-")


async def test_budget_totals_come_from_the_ledger(make_ledger: MakeLedger) -> None:
    now = at(2025, 3, 9, 12)
    async with make_ledger() as ledger:
        await ledger.append_many([
            rec(1, "alice", at(2025, 2, 28, 23), 1000.0),
            rec(2, "alice", at(2025, 3, 2), 2000.0, 1.0),
            rec(3, "alice", at(2025, 3, 9, 1), 300.0, 0.5),
            rec(4, "bob", at(2025, 3, 9, 2), 50.0),
        ])  # fmt: skip
        book = BudgetBook(ledger)
        await book.set(Budget("alice", "day", energy_j=3600.0))
        await book.load(now)
    assert book.spent("alice", "day", now) == (300.0, 0.5)
    assert book.spent("alice", "month", now) == (2300.0, 1.5)
    status = book.status("alice", now)
    assert status is not None and status.remaining_energy_j == 3300.0


@pytest.mark.parametrize("by", ["user", "model", "day", "endpoint"])
async def test_report_totals_equal_the_sum_of_the_rows(make_ledger: MakeLedger, by: str) -> None:
    rows = generated()
    async with make_ledger() as ledger:
        await ledger.append_many(rows)
        report = await build_report(ledger, parse_query({"by": by, "unit": "J"}))
    assert report.totals.requests == len(rows)
    assert report.totals.energy == pytest.approx(sum(r.energy_j or 0 for r in rows), rel=1e-9)
    assert sum(line.requests for line in report.lines) == len(rows)


async def test_rows_filter_read_back_and_replay_once(make_ledger: MakeLedger) -> None:
    rows = generated()[:20]
    async with make_ledger() as ledger:
        await ledger.append_many(rows)
        await ledger.append(rows[0])  # a replayed row adds nothing
        alice = [r async for r in ledger.iter_rows("user = ?", [rows[0].user])]
        recent = await ledger.fetchall("SELECT * FROM requests ORDER BY id DESC LIMIT ?", [3])
        before = await ledger.data_version()
        await KeyStore(ledger).create("carol")
        after = await ledger.data_version()
    assert len(alice) == sum(r.user == rows[0].user for r in rows)
    assert [row_from_sql(r).request_id for r in recent] == [r.request_id for r in rows[-3:][::-1]]
    assert after != before
