"""The HTTP admin API (``/v1/energy/admin/…``): keys and budgets without a shell."""

from __future__ import annotations

import logging

import httpx
import pytest

from accounting.auth import KeyStore
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ADMIN = "/v1/energy/admin"


async def admin_key(store: Store) -> str:
    async with store.ledger() as ledger:  # as `joulegate keys create --admin` does
        return (await KeyStore(ledger).create("root", admin=True))[0]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_an_admin_creates_a_key_that_works_at_once_and_revokes_it(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    root = await admin_key(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    caplog.set_level(logging.INFO, logger="joulegate.audit")
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url, headers=bearer(root)) as admin,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        made = await admin.post(f"{ADMIN}/keys", json={"user": "alice"})
        key = made.json()["key"]
        used = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        listed = await admin.get(f"{ADMIN}/keys")
        users = await admin.get(f"{ADMIN}/users")
        revoked = await admin.delete(f"{ADMIN}/keys/{key[:11]}")
        again = await admin.delete(f"{ADMIN}/keys/{key[:11]}")
        refused = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        with_revoked = await admin.get(f"{ADMIN}/keys", params={"all": "true", "user": "alice"})
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    assert key.startswith("jg-") and made.json()["prefix"] == key[:11]
    assert (made.json()["user"], made.json()["admin"]) == ("alice", False)
    assert used.status_code == 200
    assert [r["user"] for r in await store.rows()] == ["alice"]
    assert key not in listed.text  # shown once, at creation, never again
    assert {(k["prefix"], k["user"]) for k in listed.json()["data"]} == {
        (root[:11], "root"), (key[:11], "alice")
    }  # fmt: skip
    by_user = {u["user"]: u for u in users.json()["data"]}
    assert by_user["alice"]["keys"] == 1 and by_user["root"]["admin"] is True
    assert revoked.status_code == 200 and revoked.json()["revoked"] == 1
    assert again.status_code == 404 and again.json()["error"]["code"] == "key_not_found"
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"
    (shown,) = with_revoked.json()["data"]
    assert shown["prefix"] == key[:11] and shown["revoked"] is not None
    audit = [r.getMessage() for r in caplog.records if r.name == "joulegate.audit"]
    assert len(audit) == 2  # the creation and the one revocation that did something
    assert all("'root'" in line and root[:11] in line for line in audit)
    assert "alice" in audit[0] and key[:11] in audit[0] and key[:11] in audit[1]
    assert not any(key in r.getMessage() or root in r.getMessage() for r in caplog.records)


async def test_budgets_set_and_cleared_over_http_apply_to_the_next_request(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    root = await admin_key(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url, headers=bearer(root)) as admin,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        bob = (await admin.post(f"{ADMIN}/keys", json={"user": "bob"})).json()["key"]
        budget = {"user": "bob", "period": "day", "energy_wh": 1e-6, "co2e_g": 40}
        set_ = await admin.put(f"{ADMIN}/budgets", json=budget)
        crossing = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(bob))
        over = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(bob))
        listed = await admin.get(f"{ADMIN}/budgets")
        cleared = await admin.delete(f"{ADMIN}/budgets", params={"user": "bob"})
        free = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(bob))
        cleared_again = await admin.delete(f"{ADMIN}/budgets", params={"user": "bob"})
    assert set_.status_code == 200
    assert set_.json()["limit_wh"] == pytest.approx(1e-6) and set_.json()["limit_co2e_g"] == 40
    assert set_.json()["period"] == "day" and set_.json()["used_wh"] == 0
    assert crossing.status_code == 200 and over.status_code == 429
    (status,) = listed.json()["data"]
    assert status["user"] == "bob" and status["exhausted"] == "energy"
    assert cleared.status_code == 200 and free.status_code == 200
    assert "x-energy-budget-remaining-wh" not in free.headers
    assert cleared_again.status_code == 404
    assert cleared_again.json()["error"]["code"] == "budget_not_found"


async def test_only_admin_keys_pass_and_bad_input_is_a_400_naming_the_field(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    root = await admin_key(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url, headers=bearer(root)) as admin,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        user_key = (await admin.post(f"{ADMIN}/keys", json={"user": "carol"})).json()["key"]
        nobody = await c.get(f"{ADMIN}/users")
        user = await c.post(f"{ADMIN}/keys", json={"user": "x"}, headers=bearer(user_key))
        bad = {
            "energy_wh": await admin.put(f"{ADMIN}/budgets", json={"user": "a", "energy_wh": -1}),
            "co2e_g": await admin.put(f"{ADMIN}/budgets", json={"user": "a", "co2e_g": "lots"}),
            "period": await admin.put(
                f"{ADMIN}/budgets", json={"user": "a", "period": "week", "energy_wh": 1}
            ),
            "user": await admin.post(f"{ADMIN}/keys", json={"user": "  "}),
            "admin": await admin.post(f"{ADMIN}/keys", json={"user": "a", "admin": "yes"}),
            "colour": await admin.put(f"{ADMIN}/budgets", json={"user": "a", "colour": 1}),
            "prefix": await admin.delete(f"{ADMIN}/keys/{user_key}"),  # never the whole key
        }
        no_limit = await admin.put(f"{ADMIN}/budgets", json={"user": "a"})
        not_json = await admin.post(f"{ADMIN}/keys", content=b"{nope")
        still = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(user_key))
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "missing_api_key"
    assert user.status_code == 403 and user.json()["error"]["type"] == "permission_error"
    for param, r in bad.items():
        assert r.status_code == 400, (param, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert no_limit.status_code == 400 and "energy_wh and/or co2e_g" in no_limit.text
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert still.status_code == 200  # the whole key in a refused URL did not revoke it


async def test_in_open_mode_the_admin_api_says_how_to_get_an_admin_key(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="open")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post(f"{ADMIN}/keys", json={"user": "mallory", "admin": True})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_api_off"
    assert "joulegate keys create" in r.json()["error"]["message"]
