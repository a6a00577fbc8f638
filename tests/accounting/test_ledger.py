"""The ledger file: schema and migrations, rows, concurrent writers, what gets recorded."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from accounting.ledger.rows import MIGRATIONS, SCHEMA_VERSION, LedgerRow
from accounting.ledger.sqlite import SqliteLedger, default_path
from config import LedgerError, LedgerSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import CO2E_G, ENERGY_J, accounting_components, db_rows
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "secret prompt"}], "max_tokens": 4}


def row(n: int, user: str = "alice", **kw: object) -> LedgerRow:
    return LedgerRow(request_id=f"r{n}", ts=f"2025-03-01T00:00:{n % 60:02d}.000000Z", user=user,
                     endpoint="chat/completions", energy_j=float(n), **kw)  # type: ignore[arg-type]  # fmt: skip


def schema_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_a_new_file_gets_the_whole_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite3"
    async with SqliteLedger(path):
        pass
    assert schema_version(path) == SCHEMA_VERSION == 12
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
    assert {"requests", "api_keys", "budgets"} <= tables
    assert {"attribution", "concurrency_mean"} <= columns
    assert "requests_user_ts" in indexes


async def test_a_file_of_the_previous_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO requests (request_id, ts, user, endpoint, energy_j)"
            " VALUES ('old', '2024-01-01T00:00:00.000000Z', 'bob', 'completions', 5.0)"
        )
    async with SqliteLedger(path) as ledger:
        rows = [r async for r in ledger.iter_rows()]
        keys = await ledger.fetchall("SELECT COUNT(*) FROM api_keys")
    assert schema_version(path) == SCHEMA_VERSION
    assert [(r.request_id, r.user, r.energy_j) for r in rows] == [("old", "bob", 5.0)]
    assert keys[0][0] == 0


async def test_a_file_from_a_newer_joulegate_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match="schema version 99"):
        await SqliteLedger(path).open()


async def test_read_commands_do_not_create_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        await SqliteLedger(tmp_path / "none.sqlite3").open(must_exist=True)
    assert not (tmp_path / "none.sqlite3").exists()


def test_the_default_location_is_the_users_data_folder() -> None:
    assert default_path().parts[-2:] == ("joulegate", "ledger.sqlite3")
    assert SqliteLedger.from_settings(LedgerSettings()).path == default_path()


async def test_rows_round_trip_every_column(tmp_path: Path) -> None:
    original = row(1, stream=True, energy_components_j={"gpu": 1.5, "dram": None},
                   request_params={"max_tokens": 4, "temperature": 0.5}, co2e_g=0.25,
                   failure="client_disconnected", prompt="p", response="r")  # fmt: skip
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        await ledger.append(original)
        await ledger.append(original)  # same request id: kept once
        (back,) = [r async for r in ledger.iter_rows()]
    assert back.id == 1
    back.id = None
    assert back == original


async def test_concurrent_writers_on_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as a, SqliteLedger(path, busy_timeout_s=5) as b:

        async def write(ledger: SqliteLedger, start: int) -> None:
            for n in range(start, start + 150):
                await ledger.append(row(n))

        await asyncio.gather(write(a, 0), write(b, 1000), write(a, 2000), write(b, 3000))
        assert not a.degraded and not b.degraded
    assert len(db_rows(path)) == 600


async def test_each_gated_request_is_recorded_before_its_last_byte(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = LedgerSettings(path=str(path))
    async with (
        joulegate_app(fake.url, accounting_components(), ledger=ledger) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        # The response is complete: its row is already committed, seen from another connection.
        (first,) = db_rows(path)
        stream = {**CHAT, "stream": True, "user": "ignored-in-open-mode"}
        async with c.stream("POST", jg.url + "/v1/chat/completions", json=stream) as s:
            body = await s.aread()
        assert len(db_rows(path)) == 2
        models = await c.get(jg.url + "/v1/models")
    assert r.status_code == 200 and s.status_code == 200 and models.status_code == 200
    assert b'"usage"' not in body  # the usage joulegate asked for was stripped
    assert first["user"] == "anonymous" and first["key_prefix"] is None
    assert first["endpoint"] == "chat/completions" and first["status"] == 200
    assert (first["model_requested"], first["model_served"]) == ("m", "m")
    assert (first["prompt_tokens"], first["completion_tokens"]) == (7, 4)
    assert first["energy_j"] == ENERGY_J and first["co2e_g"] == CO2E_G
    assert json.loads(first["energy_components_j"]) == {"gpu": 6.0, "cpu": 1.2, "dram": None}
    assert first["meter"] == "fake" and first["trace_id"]
    assert first["finish_reason"] == "length" and first["failure"] is None
    assert first["duration_s"] >= 0 and first["queue_s"] >= 0
    assert first["ts"] <= first["finished_ts"]
    # The prompt's approximate size, not its content: how forecasts learn to size prompts.
    assert json.loads(first["request_params"]) == {
        "max_tokens": 4, "messages_count": 1, "prompt_approx_tokens": 8,
    }  # fmt: skip
    assert first["prompt"] is None and first["response"] is None  # no content by default
    second = db_rows(path)[1]
    assert second["stream"] == 1 and (second["prompt_tokens"], second["completion_tokens"]) == (
        7,
        4,
    )


async def test_content_is_stored_only_when_asked(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = LedgerSettings(path=str(path), record_content=True)
    async with (
        joulegate_app(fake.url, accounting_components(), ledger=ledger) as jg,
        httpx.AsyncClient() as c,
    ):
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    for stored in db_rows(path):
        assert json.loads(stored["prompt"]) == {"messages": CHAT["messages"]}
        assert stored["response"] == "Hello there, friend"


async def test_recorded_content_never_reaches_a_log_even_at_debug(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # log_level = "debug": every library's debug lines
    path = tmp_path / "l.sqlite3"
    ledger = LedgerSettings(path=str(path), record_content=True)
    async with (
        joulegate_app(fake.url, accounting_components(), ledger=ledger) as jg,
        httpx.AsyncClient() as c,
    ):
        await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert [r["prompt"] and "secret prompt" in r["prompt"] for r in db_rows(path)] == [True]
    assert caplog.records  # debug logging was on
    for record in caplog.records:
        text = record.getMessage()
        assert "secret prompt" not in text and "Hello there" not in text, (record.name, text)


async def test_failed_and_cancelled_requests_are_recorded_with_a_reason(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = LedgerSettings(path=str(path))
    async with (
        joulegate_app(fake.url, accounting_components(), ledger=ledger) as jg,
        httpx.AsyncClient() as c,
    ):
        bad = await c.post(
            jg.url + "/v1/chat/completions", json=CHAT, headers={"x-fake-status": "500"}
        )
        stream = {**CHAT, "stream": True, "max_tokens": 50}
        async with c.stream("POST", jg.url + "/v1/chat/completions", json=stream,
                            headers={"x-fake-chunk-delay-ms": "50"}) as s:  # fmt: skip
            async for _ in s.aiter_raw():
                break  # the client leaves mid-stream
        for _ in range(100):
            if len(db_rows(path)) == 2:
                break
            await asyncio.sleep(0.02)
    assert bad.status_code == 500
    failed, cancelled = db_rows(path)
    assert failed["status"] == 500 and failed["failure"] == "backend_error"
    assert failed["energy_j"] == ENERGY_J
    assert cancelled["failure"] == "client_disconnected" and cancelled["status"] == 200
    assert cancelled["energy_j"] == ENERGY_J  # it used energy until the client left
