"""Several joulegates on one ledger: the ``host`` column, and budgets across hosts.

Each test runs on both backends (``store``); two ledgers opened on one store stand
for two hosts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import httpx
import msgspec

from accounting import LedgerRow, iso
from accounting.budgets import Budget, BudgetBook
from accounting.ledger.rows import utcnow
from config import AuthSettings, BudgetSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import ENERGY_J, Store, accounting_components
from tests.support.rows import at, rec
from tests.support.serving import CHAT, JoulegateApp


async def test_every_row_names_the_host_that_recorded_it(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    named = {"ledger": dataclasses.replace(store.settings, node_name="gpu-07")}
    async with (
        joulegate_app(fake.url, accounting_components(), **named) as jg,
        httpx.AsyncClient() as c,
    ):
        assert (await c.post(jg.url + "/v1/chat/completions", json=CHAT)).status_code == 200
    unnamed = {"ledger": store.settings}
    async with (
        joulegate_app(fake.url, accounting_components(), **unnamed) as jg,
        httpx.AsyncClient() as c,
    ):
        assert (await c.post(jg.url + "/v1/chat/completions", json=CHAT)).status_code == 200
    assert [r["host"] for r in await store.rows()] == ["gpu-07", socket.gethostname()]


def _on(host: str, row: LedgerRow) -> LedgerRow:
    return msgspec.structs.replace(row, host=host)


async def test_spending_on_one_host_is_enforced_on_the_other_after_a_refresh(
    store: Store,
) -> None:
    now = at(2025, 3, 9, 12)
    async with store.ledger() as ledger_a, store.ledger() as ledger_b:
        a, b = BudgetBook(ledger_a, host="a"), BudgetBook(ledger_b, host="b")
        await a.set(Budget("u", "day", energy_j=100.0))
        await ledger_a.append(_on("a", rec(1, "u", at(2025, 3, 9, 1), 30.0, 0.5)))
        await ledger_a.append(_on("a", rec(2, "u", at(2025, 3, 8, 23), 500.0)))  # yesterday
        await a.load(now)
        await b.load(now)
        assert b.spent("u", "day", now) == a.spent("u", "day", now) == (30.0, 0.5)
        row = _on("a", rec(3, "u", at(2025, 3, 9, 11), 80.0))
        a.add(row, now)
        await ledger_a.append(row)
        status_a, stale_b = a.status("u", now), b.status("u", now)
        assert status_a is not None and status_a.exhausted == "energy"
        assert stale_b is not None and stale_b.exhausted is None  # not refreshed yet
        await b.refresh(now)
        status_b = b.status("u", now)
        assert status_b is not None and status_b.exhausted == "energy"
        # b's own rows count at once and are not counted again by the refresh.
        own = _on("b", rec(4, "u", at(2025, 3, 9, 11, 30), 5.0))
        b.add(own, now)
        await ledger_b.append(own)
        await b.refresh(now)
        await a.refresh(now)
        assert b.spent("u", "day", now) == a.spent("u", "day", now) == (115.0, 0.5)
        # Only the period of a budget is refreshed: b's month has what it loaded and its own.
        assert b.spent("u", "month", now) == (535.0, 0.5)


async def test_a_budget_and_spending_on_one_host_refuse_requests_on_the_other(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    settings = {
        "ledger": dataclasses.replace(store.settings, node_name="b"),
        "auth": AuthSettings(mode="trust", user_header="x-user", refresh_s=0.05),
        "budgets": BudgetSettings(refresh_s=0.05),
    }
    erin = {"x-user": "erin"}
    async with (
        store.ledger() as ledger_a,
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        host_a = BudgetBook(ledger_a, host="a")
        await host_a.set(Budget("erin", "day", energy_j=ENERGY_J * 10))
        remaining = None
        for _ in range(100):  # the budget set on host a reaches host b
            answer = await c.post(url, json=CHAT, headers=erin)
            remaining = answer.headers.get("x-energy-budget-remaining-wh")
            if remaining is not None:
                break
            await asyncio.sleep(0.02)
        assert remaining is not None and float(remaining) > 0
        row = LedgerRow(request_id="on-a", ts=iso(utcnow()), user="erin", host="a",
                        endpoint="chat/completions", energy_j=ENERGY_J * 10)  # fmt: skip
        await ledger_a.append(row)
        status = 200
        for _ in range(100):  # host a's spending reaches host b within budgets.refresh_s
            status = (await c.post(url, json=CHAT, headers=erin)).status_code
            if status == 429:
                break
            await asyncio.sleep(0.02)
    assert status == 429
    hosts = {r["host"] for r in await store.rows()}
    assert hosts == {"a", "b"}
