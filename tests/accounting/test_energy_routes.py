"""``GET /v1/energy/requests/{id}``: one request's record, by joulegate's id or the backend's."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from accounting import SqliteLedger
from accounting.auth import KeyStore
from accounting.ledger.rows import MIGRATIONS
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import ENERGY_J, Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def keys_for(store: Store) -> dict[str, str]:
    async with store.ledger() as ledger:
        keys = KeyStore(ledger)
        return {
            "alice": (await keys.create("alice"))[0],
            "bob": (await keys.create("bob"))[0],
            "admin": (await keys.create("root", admin=True))[0],
        }


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **more}


def settings_for(store: Store) -> dict[str, Any]:
    return {"ledger": store.settings, "auth": AuthSettings(mode="keys")}


async def test_a_request_is_found_by_its_x_request_id_and_by_its_response_id(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    keys = await keys_for(store)
    async with (
        joulegate_app(fake.url, accounting_components(), **settings_for(store)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        answer = await c.post(
            "/v1/chat/completions",
            json=CHAT,
            headers=bearer(keys["alice"], **{"x-fake-response-id": "chatcmpl-a1"}),
        )
        # A stream's row is there as soon as the client has read the stream's end.
        async with c.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=bearer(keys["alice"], **{"x-fake-response-id": "chatcmpl-s2"}),
        ) as streamed:
            await streamed.aread()
            by_stream_id = await c.get(
                "/v1/energy/requests/chatcmpl-s2", headers=bearer(keys["alice"])
            )
        request_id = answer.headers["x-request-id"]
        by_request_id = await c.get(
            f"/v1/energy/requests/{request_id}", headers=bearer(keys["alice"])
        )
        by_response_id = await c.get(
            "/v1/energy/requests/chatcmpl-a1", headers=bearer(keys["alice"])
        )
        listed = (await c.get("/v1/energy/requests", headers=bearer(keys["alice"]))).json()
    assert by_request_id.status_code == 200 and by_response_id.status_code == 200
    record = by_request_id.json()
    assert record == by_response_id.json()
    assert record == next(r for r in listed["data"] if r["request_id"] == request_id)
    assert record["response_id"] == "chatcmpl-a1" and record["user"] == "alice"
    assert record["energy_j"] == ENERGY_J and record["status"] == answer.status_code == 200
    assert by_stream_id.status_code == 200
    assert by_stream_id.json()["request_id"] == streamed.headers["x-request-id"]
    assert by_stream_id.json()["stream"] is True and by_stream_id.json()["energy_j"] == ENERGY_J


async def test_another_users_id_is_404_like_an_unknown_one_and_an_admin_sees_it(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    keys = await keys_for(store)
    async with (
        joulegate_app(fake.url, accounting_components(), **settings_for(store)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        alices = await c.post(
            "/v1/chat/completions",
            json=CHAT,
            headers=bearer(keys["alice"], **{"x-fake-response-id": "chatcmpl-a9"}),
        )
        rid = alices.headers["x-request-id"]
        bob_by_request_id = await c.get(f"/v1/energy/requests/{rid}", headers=bearer(keys["bob"]))
        bob_by_response_id = await c.get(
            "/v1/energy/requests/chatcmpl-a9", headers=bearer(keys["bob"])
        )
        unknown = await c.get("/v1/energy/requests/chatcmpl-nobody", headers=bearer(keys["bob"]))
        admin = await c.get(f"/v1/energy/requests/{rid}", headers=bearer(keys["admin"]))
        anonymous = await c.get(f"/v1/energy/requests/{rid}")
    for r in (bob_by_request_id, bob_by_response_id, unknown):
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["type"] == "not_found_error" and error["code"] == "not_found"
        assert "alice" not in r.text
    # Nothing tells a stranger's id from an unknown one but the id itself.
    messages = [
        r.json()["error"]["message"].replace(asked, "ID")
        for r, asked in ((bob_by_request_id, rid), (bob_by_response_id, "chatcmpl-a9"),
                         (unknown, "chatcmpl-nobody"))
    ]  # fmt: skip
    assert len(set(messages)) == 1
    assert admin.status_code == 200 and admin.json()["user"] == "alice"
    assert anonymous.status_code == 401


async def test_a_response_id_shared_by_two_users_gives_each_their_own_row(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    keys = await keys_for(store)
    async with (
        joulegate_app(fake.url, accounting_components(), **settings_for(store)) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        ids = {}
        for who in ("alice", "bob"):  # the fake backend answers chatcmpl-fake to everyone
            r = await c.post("/v1/chat/completions", json=CHAT, headers=bearer(keys[who]))
            ids[who] = r.headers["x-request-id"]
        alice = await c.get("/v1/energy/requests/chatcmpl-fake", headers=bearer(keys["alice"]))
        bob = await c.get("/v1/energy/requests/chatcmpl-fake", headers=bearer(keys["bob"]))
    assert alice.json()["request_id"] == ids["alice"]
    assert bob.json()["request_id"] == ids["bob"]


async def test_without_a_ledger_the_route_is_404_in_openais_shape(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient(base_url=jg.url) as c:
        r = await c.get("/v1/energy/requests/chatcmpl-fake")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_a_schema_5_ledger_gains_the_response_id_column_and_its_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    with sqlite3.connect(path) as conn:
        for number in range(5):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
        conn.execute(
            "INSERT INTO requests (request_id, ts, user, endpoint)"
            " VALUES ('old', '2025-01-01T00:00:00.000000Z', 'bob', 'chat/completions')"
        )
    async with SqliteLedger(path) as ledger:
        old = await ledger.fetchall("SELECT request_id, response_id FROM requests")
        plan = await ledger.fetchall(
            "EXPLAIN QUERY PLAN SELECT * FROM requests WHERE response_id = ? AND user = ?"
            " ORDER BY id DESC LIMIT 1",
            ["chatcmpl-x", "bob"],
        )
    assert [tuple(r) for r in old] == [("old", None)]
    # A look-up by response id searches its index, never scans a big ledger.
    assert "USING INDEX requests_response_id" in plan[0]["detail"]
