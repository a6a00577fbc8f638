"""The public playground (``console.public``): anonymous prompts in ``keys`` mode,
recorded under ``anonymous``, limited per client address; off, a visitor must sign in."""

from __future__ import annotations

from pathlib import Path

import httpx

from accounting import SqliteLedger
from accounting.auth import KeyStore
from config import AuthSettings, ConsoleSettings, LedgerSettings
from tests.support.console import console_components, csrf_of
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp

PROMPT = {"model": "fake-model", "prompt": "Say hi", "max_tokens": 4, "task": "questions"}


async def test_anonymous_prompts_are_recorded_as_anonymous_and_limited_per_address(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await KeyStore(ledger).create("alice")  # keys mode: /v1 needs a key
    console = ConsoleSettings(public=True, public_requests_per_minute=2, public_max_tokens=16)
    async with (
        joulegate_app(
            fake.url,
            console_components(),
            ledger=LedgerSettings(path=str(path)),
            auth=AuthSettings(mode="keys"),
            console=console,
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        page = await c.get("/console/playground")
        headers = {"x-csrf-token": csrf_of(page.text)}
        too_long = await c.post(
            "/console/api/chat", json={**PROMPT, "max_tokens": 17}, headers=headers
        )
        answered = [await c.post("/console/api/chat", json=PROMPT, headers=headers) for _ in "ab"]
        limited = await c.post("/console/api/chat", json=PROMPT, headers=headers)
        direct = await c.post(
            "/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
        )
        usage = await c.get("/console/usage")
    async with SqliteLedger(path) as ledger:
        rows = await ledger.fetchall("SELECT user, key_prefix, task FROM requests")
    assert page.status_code == 200 and "Public playground" in page.text
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    assert [a.status_code for a in answered] == [200, 200]
    assert all("event: done" in a.text for a in answered)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert [tuple(r) for r in rows] == [("anonymous", None, "questions")] * 2
    assert direct.status_code == 401  # the console opens only its playground, not /v1
    assert usage.status_code == 303  # nor anyone's usage


async def test_without_public_a_visitor_must_sign_in_to_prompt(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await KeyStore(ledger).create("alice")
    async with (
        joulegate_app(
            fake.url,
            console_components(),
            ledger=LedgerSettings(path=str(path)),
            auth=AuthSettings(mode="keys"),
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        page = await c.get("/console/playground")
        form = await c.get("/console/signin")
        refused = await c.post(
            "/console/api/chat", json=PROMPT, headers={"x-csrf-token": csrf_of(form.text)}
        )
    assert page.status_code == 303 and page.headers["location"].endswith("next=playground")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_signed_in"
    assert fake.seen == []
