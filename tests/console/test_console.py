"""The console over plain HTTP: security headers, the session cookie, CSRF, sign-out,
a revoked key's session, who may see what, and ``console.enabled``."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting import SqliteLedger
from accounting.auth import ANONYMOUS, KeyStore
from config import AuthSettings, ConsoleSettings, LedgerSettings
from proxy.console.guard import CSP
from proxy.console.sessions import SessionStore
from tests.support.console import console_components, csrf_of
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp
from tests.support.telemetry import until

PROMPT = {"model": "fake-model", "prompt": "Say hi", "max_tokens": 4}


async def _keys(path: Path) -> dict[str, str]:
    async with SqliteLedger(path) as ledger:
        keys = KeyStore(ledger)
        return {
            "alice": (await keys.create("alice"))[0],
            "bob": (await keys.create("bob"))[0],
            "root": (await keys.create("root", admin=True))[0],
        }


def _settings(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {
        "ledger": LedgerSettings(path=str(tmp_path / "l.sqlite3")),
        "auth": AuthSettings(mode="keys", refresh_s=0.05),
        **more,
    }


async def _sign_in(c: httpx.AsyncClient, key: str) -> tuple[str, httpx.Response]:
    form = await c.get("/console/signin")
    answer = await c.post(
        "/console/signin", data={"csrf": csrf_of(form.text), "key": key, "next": "usage"}
    )
    return csrf_of((await c.get("/console/usage")).text), answer


async def test_every_console_answer_carries_the_security_headers_and_no_inline_script(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    keys = await _keys(tmp_path / "l.sqlite3")
    async with (
        joulegate_app(fake.url, console_components(), **_settings(tmp_path)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        await _sign_in(c, keys["alice"])
        answers = [await c.get(f"/console/{p}") for p in ("playground", "compare", "usage")]
        answers += [await c.get("/console/admin"), await c.get("/console/api/live")]
        answers += [await c.get("/console/static/common.js"), await c.post("/console/api/chat")]
    assert [a.status_code for a in answers] == [200, 200, 200, 403, 403, 200, 403]
    for a in answers:
        assert a.headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
        assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
        assert a.headers["x-content-type-options"] == "nosniff"
    for page in answers[:4]:
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "an inline script"
        assert not re.search(r"(src|href)=\"https?://", page.text), "an asset from elsewhere"
        assert page.headers["cache-control"] == "no-store"


async def test_the_session_cookie_is_httponly_strict_new_at_sign_in_and_never_the_key(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    keys = await _keys(tmp_path / "l.sqlite3")
    async with (
        joulegate_app(fake.url, console_components(), **_settings(tmp_path)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        first = (await c.get("/console/signin")).cookies["jg_console"]
        csrf, signed = await _sign_in(c, keys["alice"])
        page = await c.get("/console/usage")
        cookie = signed.headers["set-cookie"]
        wrong = await c.post(
            "/console/signin", data={"csrf": csrf, "key": keys["alice"] + "x", "next": "usage"}
        )
        refused = await c.post("/console/signout", data={"csrf": "stale"})
        out = await c.post("/console/signout", data={"csrf": csrf})
        after = await c.get("/console/usage")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http on loopback; see the next test for TLS
    assert signed.cookies["jg_console"] != first  # a new session id at sign-in
    assert keys["alice"] not in cookie and keys["alice"] not in page.text
    assert page.status_code == 200 and 'id="who">alice' in page.text
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert out.status_code == 303 and out.headers["location"] == "/console/signin"
    assert after.status_code == 303 and after.headers["location"].startswith("/console/signin")


async def test_the_cookie_is_secure_when_set_so_and_sessions_expire() -> None:
    now = [0.0]
    store = SessionStore(ttl_s=60, max_sessions=2, clock=lambda: now[0])
    a, b = store.new(), store.new()
    now[0] = 59.0
    assert store.get(a.sid) is a  # used: its expiry moves on
    now[0] = 100.0
    assert store.get(a.sid) is a and store.get(b.sid) is None  # b was not used: expired
    c, d = store.new(), store.new()
    assert store.get(a.sid) is None and len(store) == 2  # the oldest went first
    ticket = store.ticket(ANONYMOUS)
    assert store.redeem(ticket) is not None and store.redeem(ticket) is None  # once
    assert store.redeem("jg-not-a-ticket") is None and d.csrf_ok(d.csrf)
    assert not d.csrf_ok(None) and not d.csrf_ok(c.csrf)


async def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    keys = await _keys(tmp_path / "l.sqlite3")
    async with (
        joulegate_app(fake.url, console_components(), **_settings(tmp_path)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        csrf, _ = await _sign_in(c, keys["alice"])
        none = await c.post("/console/api/chat", json=PROMPT)
        other = await c.post("/console/api/chat", json=PROMPT, headers={"x-csrf-token": "x"})
        origin = await c.post(
            "/console/api/chat",
            json=PROMPT,
            headers={"x-csrf-token": csrf, "origin": "https://evil.example"},
        )
        good = await c.post("/console/api/chat", json=PROMPT, headers={"x-csrf-token": csrf})
    assert [r.status_code for r in (none, other, origin)] == [403, 403, 403]
    assert all(r.json()["error"]["code"] == "csrf_failed" for r in (none, other, origin))
    assert good.status_code == 200 and "event: done" in good.text
    assert len(fake.seen) == 1  # only the good one reached the backend


async def test_a_non_admin_sees_only_their_own_and_a_revoked_key_ends_its_session(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    keys = await _keys(path)
    async with (
        joulegate_app(fake.url, console_components(), **_settings(tmp_path)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        bob = {"authorization": f"Bearer {keys['bob']}"}
        bobs = await c.post("/v1/chat/completions", json=_chat(), headers=bob)
        await _sign_in(c, keys["alice"])
        theirs = await c.get(f"/console/api/requests/{bobs.headers['x-request-id']}")
        named = await c.get("/console/api/requests", params={"user": "bob"})
        usage = await c.get("/console/api/usage", params={"user": "bob"})
        users = await c.get("/console/api/users")
        admin_c = httpx.AsyncClient(base_url=jg.url)
        await _sign_in(admin_c, keys["root"])
        seen_by_admin = await admin_c.get(f"/console/api/requests/{bobs.headers['x-request-id']}")
        await admin_c.aclose()
        async with SqliteLedger(path) as ledger:
            await KeyStore(ledger).revoke(keys["alice"])
        for _ in range(200):  # the revocation reaches the server within auth.refresh_s
            gone = await c.get("/console/usage")
            if gone.status_code == 303:
                break
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert named.status_code == 403 and usage.status_code == 403 and users.status_code == 403
    assert seen_by_admin.status_code == 200 and seen_by_admin.json()["user"] == "bob"
    assert gone.status_code == 303 and gone.headers["location"].startswith("/console/signin")


def _chat() -> dict[str, Any]:
    return {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("enabled", [True, False])
async def test_console_enabled_false_serves_no_console_and_the_proxy_as_before(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path, enabled: bool
) -> None:
    settings = _settings(tmp_path, console=ConsoleSettings(enabled=enabled))
    settings["auth"] = AuthSettings(mode="open")
    async with (
        joulegate_app(fake.url, console_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        page = await c.get("/console/usage")
        proxied = await c.post("/v1/chat/completions", json=_chat())
    assert page.status_code == (200 if enabled else 404)
    assert proxied.status_code == 200 and proxied.json()["energy"]["co2e_g"] > 0


async def test_a_queued_prompt_is_told_its_place_then_streams_its_answer(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    keys = await _keys(tmp_path / "l.sqlite3")
    async with (
        joulegate_app(fake.url, console_components(), **_settings(tmp_path)) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        csrf, _ = await _sign_in(c, keys["alice"])
        holder = asyncio.create_task(
            c.post(
                "/v1/chat/completions",
                json=_chat(),
                headers={"authorization": f"Bearer {keys['bob']}", "x-fake-hold": "1"},
            )
        )
        await until(lambda: jg.gate.in_flight == 1)
        events: list[str] = []
        first: dict[str, Any] = {}
        async with c.stream(
            "POST", "/console/api/chat", json=PROMPT, headers={"x-csrf-token": csrf}
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                elif line.startswith("data: ") and events == ["queue"] and not first:
                    first = json.loads(line[6:])
                    fake.release()  # the slot frees: the prompt is admitted
        await holder
    assert events[0] == "queue" and "start" in events and events[-1] == "done"
    assert first == {"position": 1, "in_flight": 1, "waiting": 1}
    assert events.index("delta") > events.index("start")
