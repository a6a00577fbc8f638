"""An unwritable ledger: requests are still served and no row is silently lost."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import httpx
import msgspec
import pytest

from accounting import SqliteLedger
from config import LedgerSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components, db_rows
from tests.support.rows import eventually, fast, row, write_locked
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_rows_wait_out_a_locked_database_in_memory_and_the_fallback_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = fast(path)
    await ledger.open(serving=True)
    try:
        await ledger.append(row(0))
        with write_locked(path), caplog.at_level(logging.ERROR, "joulegate.ledger"):
            for n in range(1, 6):
                await ledger.append(row(n))
            health = ledger.health()
            filed = ledger.fallback_path.read_text().splitlines()
            await asyncio.sleep(0.2)  # retries fail while the lock is held
            assert ledger.degraded
        assert "cannot write" in caplog.text and "locked" in caplog.text
        assert health["ok"] is False and "locked" in health["error"]
        assert health["buffered_rows"] == 5 and health["fallback_rows"] == 5
        assert len(filed) == 5
        await eventually(lambda: not ledger.degraded)
        assert ledger.health() == {
            "name": "ledger", "ok": True, "path": str(path), "database": f"sqlite {path}"
        }  # fmt: skip
        assert not ledger.fallback_path.exists()
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == [f"d{n}" for n in range(6)]


async def test_a_full_buffer_spills_to_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = fast(path, buffer_rows=2)
    await ledger.open(serving=True)
    try:
        with write_locked(path):
            for n in range(7):
                await ledger.append(row(n))
            assert ledger.health()["buffered_rows"] == 2
            assert len(ledger.fallback_path.read_text().splitlines()) == 7
        await eventually(lambda: not ledger.degraded)
    finally:
        await ledger.close()
    assert len(db_rows(path)) == 7


async def test_rows_are_dropped_only_when_buffer_and_file_both_fail_and_that_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    nowhere = tmp_path / "missing-folder" / "pending.jsonl"
    ledger = fast(path, buffer_rows=3, fallback_path=nowhere)
    await ledger.open(serving=True)
    try:
        with write_locked(path), caplog.at_level(logging.ERROR, "joulegate.ledger"):
            for n in range(5):
                await ledger.append(row(n))
            health = ledger.health()
        assert health["buffered_rows"] == 3 and health["dropped_rows"] == 2
        assert caplog.text.count("DROPPED") == 2
        await eventually(lambda: not ledger.degraded)
        assert ledger.health()["dropped_rows"] == 2  # still shown after recovery
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d0", "d1", "d2"]


async def test_a_fallback_file_left_by_a_killed_run_is_replayed_once(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.append(row(0))
    # A run killed while degraded leaves its held rows in the file (d0 made it to the
    # database before the file was trimmed): replaying adds each row once.
    fallback = path.with_name(path.name + ".pending.jsonl")
    fallback.write_bytes(b"".join(msgspec.json.encode(row(n)) + b"\n" for n in range(3)))
    again = fast(path)
    await again.open(serving=True)
    try:
        assert not again.degraded and not fallback.exists()
    finally:
        await again.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d0", "d1", "d2"]


class QueryOnlyLedger(SqliteLedger):
    """A ledger whose writer SQLite refuses to write with, as for a read-only file.

    (File modes cannot be used where tests run as root, which ignores them.)
    """

    read_only = True

    def _writer_pragmas(self) -> list[str]:
        return super()._writer_pragmas() + ["PRAGMA query_only = ON"] * self.read_only


async def open_read_only(path: Path) -> QueryOnlyLedger:
    """A served ledger on a new file that its writer cannot write to (yet)."""
    async with SqliteLedger(path):
        pass
    ledger = QueryOnlyLedger(path, busy_timeout_s=0.05, retry_s=0.05)
    await ledger.open(serving=True)
    return ledger


async def test_a_read_only_database_holds_rows_until_it_is_writable_again(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = await open_read_only(path)
    try:
        await ledger.append(row(1))
        await ledger.append(row(2))
        assert ledger.degraded and "readonly" in ledger.health()["error"]
        await asyncio.sleep(0.2)
        assert ledger.degraded  # retries reopen the connection and still fail
        ledger.read_only = False
        await eventually(lambda: not ledger.degraded)
    finally:
        await ledger.close()
    assert len(db_rows(path)) == 2


def make_writable(path: Path) -> None:
    for f in path.parent.glob(path.name + "*"):
        f.chmod(0o644)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
async def test_a_read_only_file_holds_rows_until_it_is_writable_again(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path):
        pass
    ledger = fast(path, fallback_path=tmp_path / "elsewhere" / "p.jsonl")
    (tmp_path / "elsewhere").mkdir()
    path.chmod(0o444)  # e.g. restored from a backup as read-only
    await ledger.open(serving=True)
    try:
        await ledger.append(row(1))
        assert ledger.degraded and "readonly" in ledger.health()["error"]
        make_writable(path)  # SQLite made its -wal and -shm files read-only like the ledger
        await eventually(lambda: not ledger.degraded)
    finally:
        make_writable(path)
        await ledger.close()
    assert len(db_rows(path)) == 1


async def test_requests_are_served_while_the_ledger_is_locked_and_readyz_says_so(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    settings = {"ledger": LedgerSettings(path=str(path), busy_timeout_s=0.05, retry_s=0.05)}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        assert (await c.post(url, json=CHAT)).status_code == 200
        with write_locked(path):
            answers = [await c.post(url, json=CHAT) for _ in range(3)]
            stream = await c.post(url, json={**CHAT, "stream": True})
            ready = await c.get(jg.url + "/readyz")
        assert [r.status_code for r in answers] == [200] * 3 and stream.status_code == 200
        assert ready.status_code == 503
        (check,) = [x for x in ready.json()["checks"] if x["name"] == "ledger"]
        assert check["ok"] is False and check["buffered_rows"] == 4
        for _ in range(250):
            ready = await c.get(jg.url + "/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert ready.status_code == 200
    assert len(db_rows(path)) == 5


async def test_a_commit_started_early_that_fails_holds_its_row(tmp_path: Path) -> None:
    """The record stage's commit, handed to the writer before the answer ends
    (append_soon), is held like any other when the database refuses it."""
    path = tmp_path / "l.sqlite3"
    ledger = await open_read_only(path)
    try:
        assert not ledger.degraded
        await ledger.append_soon(row(1))
        assert ledger.degraded and "readonly" in ledger.health()["error"]
        ledger.read_only = False
        await eventually(lambda: not ledger.degraded)
        await ledger.append_soon(row(2))  # straight in again
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d1", "d2"]


async def test_a_commit_whose_request_was_cancelled_still_holds_its_row_if_it_fails(
    tmp_path: Path,
) -> None:
    """The request awaits its early commit in its own task; cancelled meanwhile (the
    server stopping), the commit goes on, and when it fails the row is held all the same."""
    path = tmp_path / "l.sqlite3"
    ledger = fast(path)
    await ledger.open(serving=True)
    try:
        await ledger.append(row(0))
        with write_locked(path):  # the commit waits busy_timeout_s, then fails
            waiter = asyncio.ensure_future(ledger.append_soon(row(1)))
            await asyncio.sleep(0)  # the waiter now awaits the commit on the writer thread
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await eventually(lambda: ledger.degraded)
            assert ledger.health()["buffered_rows"] == 1
        await eventually(lambda: not ledger.degraded)
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d0", "d1"]
