"""``GET /v1/energy/budget``: where a caller stands, and the header after each answer."""

from __future__ import annotations

import httpx
import pytest

from accounting.auth import KeyStore
from accounting.budgets import Budget, BudgetBook
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import CO2E_G, ENERGY_J, Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
WH = ENERGY_J / 3600


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_user_sees_their_budget_and_each_answer_tells_what_is_left_after_it(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    async with store.ledger() as ledger:
        keys = KeyStore(ledger)
        alice, bob = (await keys.create("alice"))[0], (await keys.create("bob"))[0]
        root = (await keys.create("root", admin=True))[0]
        await BudgetBook(ledger).set(Budget("alice", "month", ENERGY_J * 10, CO2E_G * 10))
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        before = (await c.get("/v1/energy/budget", headers=bearer(alice))).json()
        answers = [
            await c.post("/v1/chat/completions", json=CHAT, headers=bearer(alice)) for _ in range(3)
        ]
        after = (await c.get("/v1/energy/budget", headers=bearer(alice))).json()
        by_admin = await c.get("/v1/energy/budget?user=alice", headers=bearer(root))
        by_bob = await c.get("/v1/energy/budget?user=alice", headers=bearer(bob))
        bobs_own = (await c.get("/v1/energy/budget", headers=bearer(bob))).json()
        anonymous = await c.get("/v1/energy/budget")
    assert before["user"] == "alice"
    (mine,) = before["data"]
    assert mine["period"] == "month" and mine["resets_at"].endswith("T00:00:00.000000Z")
    assert mine["limit_wh"] == pytest.approx(10 * WH) and mine["used_wh"] == 0
    assert mine["limit_co2e_g"] == pytest.approx(10 * CO2E_G)
    (now,) = after["data"]
    assert now["used_wh"] == pytest.approx(3 * WH) and now["remaining_wh"] == pytest.approx(7 * WH)
    assert now["used_co2e_g"] == pytest.approx(3 * CO2E_G)
    assert now["remaining_co2e_g"] == pytest.approx(7 * CO2E_G) and now["exhausted"] is None
    # Each answer's header is the figure after that answer: 9, 8, 7 requests' worth left.
    left = [float(r.headers["x-energy-budget-remaining-wh"]) for r in answers]
    assert left == pytest.approx([9 * WH, 8 * WH, 7 * WH], abs=1e-4)
    assert float(answers[-1].headers["x-energy-budget-remaining-wh"]) == pytest.approx(
        now["remaining_wh"], abs=1e-4
    )
    assert by_admin.status_code == 200 and by_admin.json()["data"] == after["data"]
    assert by_bob.status_code == 403 and by_bob.json()["error"]["type"] == "permission_error"
    assert bobs_own == {"object": "list", "user": "bob", "data": []}
    assert anonymous.status_code == 401
