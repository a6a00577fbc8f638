"""``auth.mode = "auto"``: keys the moment one exists, without a restart."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from accounting.auth import KeyStore
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_key_created_while_serving_switches_auto_to_keys_at_once(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # refresh_s is long: the switch must not wait for the periodic re-read.
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="auto", refresh_s=3600)}
    caplog.set_level(logging.INFO, logger="joulegate.auth")
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        url = "/v1/chat/completions"
        before = await c.post(url, json=CHAT, headers={"authorization": "Bearer backend-key"})
        async with store.ledger() as ledger:  # `joulegate keys create`, another process
            key = (await KeyStore(ledger).create("dana"))[0]
        with_key = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {key}"})
        bogus = await c.post(url, json=CHAT, headers={"authorization": "Bearer jg-bogus123456"})
        without = await c.post(url, json=CHAT)
        report = await c.get("/v1/energy/report")
    assert before.status_code == 200
    assert with_key.status_code == 200
    assert bogus.status_code == 401 and bogus.json()["error"]["code"] == "invalid_api_key"
    assert without.status_code == 401 and without.json()["error"]["code"] == "missing_api_key"
    assert report.status_code == 401  # the energy routes ask for a key from now on too
    assert [(r["user"], r["key_prefix"]) for r in await store.rows()] == [
        ("anonymous", None), ("dana", key[:11])
    ]  # fmt: skip
    # Before keys, the client's own key went on to the backend; a jg- key never does.
    assert [s.headers.get("authorization") for s in fake.seen] == ["Bearer backend-key", None]
    switched = [r for r in caplog.records if "switched from open to keys" in r.getMessage()]
    assert len(switched) == 1


async def test_the_periodic_refresh_finds_a_new_key_and_switches_too(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="auto", refresh_s=0.05)}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        async with store.ledger() as ledger:
            await KeyStore(ledger).create("erik", admin=True)
        # No request carries the key: the periodic re-read alone finds it.
        for _ in range(200):
            r = await c.post("/v1/chat/completions", json=CHAT)
            if r.status_code == 401:
                break
            await asyncio.sleep(0.02)
    assert r.status_code == 401
