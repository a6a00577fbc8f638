"""API keys and auth modes: who a request is recorded as, and who is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from accounting.auth import KeyStore
from accounting.ledger.stage import Accounting
from config import AuthSettings, LedgerError
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def make_key(store: Store, user: str, *, admin: bool = False) -> str:
    async with store.ledger() as ledger:
        key, _ = await KeyStore(ledger).create(user, admin=admin)
    return key


async def revoke(store: Store, prefix: str) -> int:
    async with store.ledger() as ledger:
        return await KeyStore(ledger).revoke(prefix)


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


def stored_bytes(values: Sequence[Any]) -> bytes:
    return b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for v in values)


async def test_only_a_salted_digest_and_a_short_prefix_are_stored(
    store: Store, tmp_path: Path
) -> None:
    key = await make_key(store, "alice")
    other = await make_key(store, "alice")
    assert key.startswith("jg-") and len(key) == 46 and key != other
    async with store.ledger() as ledger:
        stored = await ledger.fetchall("SELECT * FROM api_keys ORDER BY id")
        (prefix, salt1), (_, salt2) = await ledger.fetchall(
            "SELECT prefix, salt FROM api_keys ORDER BY id"
        )
    # The SQLite file itself, byte for byte; in PostgreSQL every stored value.
    raw = every_byte(tmp_path) if store.kind == "sqlite" else stored_bytes(
        [v for row in stored for v in row]
    )  # fmt: skip
    assert key.encode() not in raw and key[3:].encode() not in raw
    assert prefix == key[:11] and salt1 != salt2


async def test_keys_mode_refuses_missing_wrong_and_revoked_keys(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    key = await make_key(store, "alice")
    revoked = await make_key(store, "bob")
    await revoke(store, revoked[:11])
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="auto")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        missing = await c.post(url, json=CHAT)
        wrong = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {key[:-1]}x"})
        unknown = await c.post(url, json=CHAT, headers={"authorization": "Bearer jg-nosuchkey"})
        gone = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {revoked}"})
        models = await c.get(jg.url + "/v1/models")
        ok = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {key}"})
    for r, code in ((missing, "missing_api_key"), (wrong, "invalid_api_key"),
                    (unknown, "invalid_api_key"), (gone, "revoked_api_key"),
                    (models, "missing_api_key")):  # fmt: skip
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.json()["error"]["code"] == code
    assert ok.status_code == 200
    (seen,) = fake.seen  # refused requests never reached the backend
    assert "authorization" not in seen.headers  # the client's key did not either
    (stored,) = await store.rows()  # refusals are not recorded
    assert (stored["user"], stored["key_prefix"]) == ("alice", key[:11])


async def test_the_openai_sdk_works_with_a_key_and_raises_on_a_bad_one(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    key = await make_key(store, "carol")
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with joulegate_app(fake.url, accounting_components(), **settings) as jg:
        good = openai.AsyncOpenAI(base_url=jg.url + "/v1", api_key=key, max_retries=0)
        bad = openai.AsyncOpenAI(base_url=jg.url + "/v1", api_key="jg-wrong", max_retries=0)
        answer = await good.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        await good.close()
        await bad.close()
    assert answer.choices[0].message.content
    assert [r["user"] for r in await store.rows()] == ["carol"]


async def test_keys_created_or_revoked_while_serving_take_effect(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    first = await make_key(store, "alice")
    settings = {"ledger": store.settings,
                "auth": AuthSettings(mode="keys", refresh_s=0.05)}  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        new = await make_key(store, "dave")  # as the CLI would, from another connection
        fresh = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {new}"})
        assert fresh.status_code == 200
        await revoke(store, first[:11])
        status = 200
        for _ in range(100):
            r = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {first}"})
            status = r.status_code
            if status == 401:
                break
            await asyncio.sleep(0.02)
    assert status == 401 and r.json()["error"]["code"] == "revoked_api_key"


async def test_trust_mode_takes_the_user_from_the_header_or_the_body(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    settings = {"ledger": store.settings,
                "auth": AuthSettings(mode="trust", user_header="x-user")}  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        upstream = {"authorization": "Bearer backend-key"}
        await c.post(
            url, json={**CHAT, "user": "from-body"}, headers={**upstream, "x-user": "erin"}
        )
        await c.post(url, json={**CHAT, "user": "frank"})
        await c.post(url, json=CHAT)
    assert [r["user"] for r in await store.rows()] == ["erin", "frank", "anonymous"]
    assert fake.seen[0].headers["authorization"] == "Bearer backend-key"  # not joulegate's to strip


async def test_open_mode_and_auto_without_keys_record_everyone_as_anonymous(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    for mode in ("open", "auto"):
        settings = {"ledger": store.settings, "auth": AuthSettings(mode=mode)}
        async with (
            joulegate_app(fake.url, accounting_components(), **settings) as jg,
            httpx.AsyncClient() as c,
        ):
            r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "user": "mallory"},
                             headers={"authorization": "Bearer whatever"})  # fmt: skip
            assert r.status_code == 200
    assert [r["user"] for r in await store.rows()] == ["anonymous", "anonymous"]


async def test_auto_mode_stays_keys_once_every_key_has_been_revoked(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    key = await make_key(store, "alice")
    assert await revoke(store, key[:11]) == 1
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="auto")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        missing = await c.post(url, json=CHAT)
        gone = await c.post(url, json=CHAT, headers={"authorization": f"Bearer {key}"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "revoked_api_key"
    assert fake.seen == [] and await store.rows() == []


async def test_a_failing_key_look_up_is_a_503_in_openai_shape(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_key(store, "alice")
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        ledger = jg.app.state.ctx.get(Accounting).ledger

        async def unreadable(sql: str, params: object = ()) -> list[Any]:
            raise LedgerError("cannot read the ledger: disk I/O error")

        monkeypatch.setattr(ledger, "fetchall", unreadable)
        unknown = {"authorization": "Bearer jg-Unknown0" + "x" * 36}
        chat = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=unknown)
        report = await c.get(jg.url + "/v1/energy/report", headers=unknown)
    for r in (chat, report):
        assert r.status_code == 503
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "ledger_unavailable")
    assert fake.seen == []


class CountingLookups:
    """Counts a ledger's key look-ups by prefix (the query an unknown key costs)."""

    def __init__(self, read: Any) -> None:
        self._read = read
        self.lookups = 0

    async def __call__(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if "WHERE prefix" in sql:
            self.lookups += 1
        return list(await self._read(sql, params))


async def test_an_unknown_prefix_costs_one_query_until_it_expires_or_keys_change(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now_s = [0.0]
    async with store.ledger() as opened:
        ledger = CountingLookups(opened.fetchall)
        monkeypatch.setattr(opened, "fetchall", ledger)
        keys = KeyStore(opened, unknown_ttl_s=2.0, max_unknown=2, clock=lambda: now_s[0])
        made_up = ["jg-Unknown" + str(n) + "y" * 35 for n in range(3)]
        for _ in range(50):
            assert await keys.verify(made_up[0]) is None
        assert ledger.lookups == 1
        now_s[0] = 2.0  # auth.refresh_s later: a key created since would be found
        assert await keys.verify(made_up[0]) is None and ledger.lookups == 2
        await keys.load()  # keys changed (the refresher saw data_version move)
        assert await keys.verify(made_up[0]) is None and ledger.lookups == 3
        for key in made_up[1:]:  # the cache holds two: the oldest is forgotten
            await keys.verify(key)
        assert ledger.lookups == 5
        await keys.verify(made_up[2])
        await keys.verify(made_up[0])
        assert ledger.lookups == 6
        key, _ = await keys.create("alice")
        assert await keys.verify(key) is not None and ledger.lookups == 6
        assert await keys.verify("not-a-jg-key") is None and ledger.lookups == 6
