"""Budgets: periods, running totals, the header on every response and the 429."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from accounting.budgets import Budget, BudgetBook, period_bounds
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import CO2E_G, ENERGY_J, Store, accounting_components
from tests.support.rows import at, rec
from tests.support.serving import JoulegateApp

UTC = dt.UTC
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_periods_are_utc_days_and_calendar_months() -> None:
    assert period_bounds("day", at(2025, 3, 9, 23, 59)) == (at(2025, 3, 9), at(2025, 3, 10))
    assert period_bounds("month", at(2025, 3, 9, 12)) == (at(2025, 3, 1), at(2025, 4, 1))
    assert period_bounds("month", at(2024, 12, 31, 23)) == (at(2024, 12, 1), at(2025, 1, 1))
    paris = dt.timezone(dt.timedelta(hours=1))
    assert period_bounds("day", dt.datetime(2025, 3, 10, 0, 30, tzinfo=paris))[0] == at(2025, 3, 9)


async def test_totals_start_from_the_ledger_and_roll_over_with_the_period(store: Store) -> None:
    now = at(2025, 3, 9, 12)
    async with store.ledger() as ledger:
        await ledger.append_many([
            rec(1, "alice", at(2025, 2, 28, 23), 1000.0),  # last month: not counted
            rec(2, "alice", at(2025, 3, 2), 2000.0, 1.0),  # this month, not today
            rec(3, "alice", at(2025, 3, 9, 1), 300.0, 0.5),  # today
            rec(4, "bob", at(2025, 3, 9, 2), 50.0),
        ])  # fmt: skip
        book = BudgetBook(ledger)
        await book.set(Budget("alice", "day", energy_j=3600.0))
        await book.load(now)
    assert book.spent("alice", "day", now) == (300.0, 0.5)
    assert book.spent("alice", "month", now) == (2300.0, 1.5)
    status = book.status("alice", now)
    assert status is not None and status.remaining_energy_j == 3300.0
    assert status.remaining_co2e_g is None and status.resets_at == at(2025, 3, 10)
    book.add(rec(5, "alice", at(2025, 3, 9, 13), 3400.0), now)
    status = book.status("alice", now)
    assert status is not None and status.exhausted == "energy" and status.remaining_energy_j == 0
    tomorrow = at(2025, 3, 10, 0, 0, 1)
    status = book.status("alice", tomorrow)
    assert status is not None and status.exhausted is None and status.spent_energy_j == 0
    assert book.status("bob", now) is None


async def test_every_response_carries_what_is_left_and_the_crossing_request_is_the_last(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    async with store.ledger() as ledger:
        # 2.5 requests' worth of energy per day (each request uses ENERGY_J).
        await BudgetBook(ledger).set(Budget("erin", "day", energy_j=ENERGY_J * 2.5))
    settings = {"ledger": store.settings,
                "auth": AuthSettings(mode="trust", user_header="x-user")}  # fmt: skip
    erin = {"x-user": "erin"}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        first = await c.post(url, json=CHAT, headers=erin)
        async with c.stream("POST", url, json={**CHAT, "stream": True}, headers=erin) as second:
            await second.aread()
        third = await c.post(url, json=CHAT, headers=erin)  # starts with 0.5 left: admitted
        refused = await c.post(url, json=CHAT, headers=erin)
        other = await c.post(url, json=CHAT, headers={"x-user": "frank"})
    wh = ENERGY_J / 3600
    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    remaining = [float(r.headers["x-energy-budget-remaining-wh"]) for r in (first, second, third)]
    # A whole answer tells what is left after it; a stream's headers leave before its
    # energy is known, so they tell what was left when it started.
    assert remaining == pytest.approx([1.5 * wh, 1.5 * wh, 0.0], abs=1e-4)
    assert first.headers["x-energy-budget-reset"].endswith("T00:00:00.000000Z")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "energy_budget_exceeded" and error["code"] == "energy_budget_exceeded"
    assert "erin" in error["message"] and "daily" in error["message"]
    assert float(refused.headers["x-energy-budget-remaining-wh"]) == 0
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert refused.headers["x-energy-budget-reset"] == first.headers["x-energy-budget-reset"]
    assert other.status_code == 200 and "x-energy-budget-remaining-wh" not in other.headers
    assert len(fake.seen) == 4  # the refused request never reached the backend
    assert [r["user"] for r in await store.rows()] == ["erin", "erin", "erin", "frank"]


async def test_a_carbon_budget_refuses_with_its_own_code(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    async with store.ledger() as ledger:
        await BudgetBook(ledger).set(Budget("anonymous", "month", co2e_g=CO2E_G / 2))
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="open")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        ok = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        refused = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200 and float(ok.headers["x-carbon-budget-remaining-g"]) == 0  # after
    assert "x-energy-budget-remaining-wh" not in ok.headers  # no energy limit was set
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "carbon_budget_exceeded"
    assert float(refused.headers["x-carbon-budget-remaining-g"]) == 0


async def test_budgets_set_while_serving_apply_to_spending_already_recorded(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    settings = {"ledger": store.settings,
                "auth": AuthSettings(mode="open", refresh_s=0.05)}  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        assert (await c.post(url, json=CHAT)).status_code == 200
        async with store.ledger() as cli:  # what `joulegate users set-budget` does
            await BudgetBook(cli).set(Budget("anonymous", "month", energy_j=ENERGY_J / 2))
        status = 200
        for _ in range(100):
            status = (await c.post(url, json=CHAT)).status_code
            if status == 429:
                break
            await asyncio.sleep(0.02)
    assert status == 429


@pytest.mark.parametrize("max_concurrency", [1, 3])
async def test_queued_requests_are_checked_at_admission_so_the_overshoot_is_bounded(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store, max_concurrency: int
) -> None:
    async with store.ledger() as ledger:
        # Less than one request's energy: the first admitted ones use it all up.
        await BudgetBook(ledger).set(Budget("anonymous", "day", energy_j=ENERGY_J / 10))
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="open"),
                "max_concurrency": max_concurrency}  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(timeout=30) as c,
    ):
        slow = {"x-fake-delay-ms": "30"}
        answers = await asyncio.gather(
            *(c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=slow) for _ in range(40))
        )
    statuses = [r.status_code for r in answers]
    # All 40 arrive while the budget still looks unspent; only those admitted before the
    # first one finished may pass: at most one slot's worth.
    assert 1 <= statuses.count(200) <= max_concurrency
    assert statuses.count(429) == 40 - statuses.count(200)
    assert len(fake.seen) == statuses.count(200)  # the refused never reached the backend
    assert fake.max_in_flight <= max_concurrency
    assert len(await store.rows()) == statuses.count(200)  # refusals used nothing: no rows
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "energy_budget_exceeded"
    assert refused.headers["x-should-retry"] == "false"
