"""Leaving degraded mode under load, rows held only in memory, and ``require_durable``."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from accounting import LedgerRow, SqliteLedger
from accounting.ledger import spill as spill_module
from config import LedgerSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components, db_rows
from tests.support.rows import eventually, fast, row, write_locked
from tests.support.serving import CHAT, JoulegateApp


async def ledger_check(c: httpx.AsyncClient, base: str) -> tuple[int, dict[str, Any]]:
    """``/readyz``'s status and its ``ledger`` check."""
    ready = await c.get(base + "/readyz")
    (check,) = [x for x in ready.json()["checks"] if x["name"] == "ledger"]
    return ready.status_code, check


def posts(fake: Any) -> int:
    """Inference requests the fake backend received (``/readyz`` also asks it for models)."""
    return sum(seen.method == "POST" for seen in fake.seen)


async def wait_readyz(
    c: httpx.AsyncClient, base: str, status: int, timeout_s: float = 10.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await c.get(base + "/readyz")).status_code != status:
        assert asyncio.get_running_loop().time() < deadline, f"/readyz never answered {status}"
        await asyncio.sleep(0.02)


class BusyLedger(SqliteLedger):
    """A ledger whose traffic never pauses: a row arrives while each batch is written."""

    arrivals = 0

    async def _insert_many(self, rows: Sequence[LedgerRow]) -> None:
        if rows:
            self.arrivals += 1
            await self.append(row(100 + self.arrivals))
        await super()._insert_many(rows)


async def test_degraded_mode_ends_although_rows_arrive_during_every_retry(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = BusyLedger(path, busy_timeout_s=0.05, retry_s=0.05)
    await ledger.open(serving=True)
    try:
        with write_locked(path):
            for n in range(1, 4):
                await ledger.append(row(n))
            assert ledger.degraded
        await eventually(lambda: not ledger.degraded)
        assert ledger.health() == {
            "name": "ledger", "ok": True, "path": str(path), "database": f"sqlite {path}"
        }  # fmt: skip
    finally:
        await ledger.close()
    ids = [r["request_id"] for r in db_rows(path)]
    expected = [f"d{n}" for n in (*range(1, 4), *range(101, 101 + ledger.arrivals))]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    assert not ledger.fallback_path.exists()


class StallingLedger(SqliteLedger):
    """A row spills while the first held batch is written; the batch after it (the
    spilled row, degraded mode already ended) stalls until the ledger closes."""

    batches = 0
    stalled: asyncio.Event | None = None

    async def _insert_many(self, rows: Sequence[LedgerRow]) -> None:
        if rows:
            self.batches += 1
            if self.batches == 1:
                await self.append(row(101))
            elif self.batches == 2 and self.stalled is not None:
                self.stalled.set()
                await asyncio.sleep(3600)  # cancelled with the retry task at close
        await super()._insert_many(rows)


async def test_closing_mid_flush_writes_the_rows_spilled_meanwhile(tmp_path: Path) -> None:
    # Degraded mode ends at the first committed batch; closing before the next one
    # (the rows spilled while the first was written) left them in the fallback file
    # until the next start, although the database took rows again.
    path = tmp_path / "l.sqlite3"
    ledger = StallingLedger(path, busy_timeout_s=0.05, retry_s=0.05)
    ledger.stalled = asyncio.Event()
    await ledger.open(serving=True)
    with write_locked(path):
        await ledger.append(row(1))
        assert ledger.degraded
    await asyncio.wait_for(ledger.stalled.wait(), 10)
    assert not ledger.degraded
    await ledger.close()
    assert sorted(r["request_id"] for r in db_rows(path)) == ["d1", "d101"]
    assert not ledger.fallback_path.exists()


async def test_degraded_mode_ends_while_requests_keep_flowing(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    settings = {"ledger": LedgerSettings(path=str(path), busy_timeout_s=0.05, retry_s=0.05)}
    served: list[str] = []
    stop = asyncio.Event()
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(timeout=30) as c,
    ):
        url = jg.url + "/v1/chat/completions"

        async def client() -> None:
            while not stop.is_set():
                r = await c.post(url, json=CHAT)
                assert r.status_code == 200
                served.append(r.headers["x-request-id"])

        first = await c.post(url, json=CHAT)  # before the lock
        served.append(first.headers["x-request-id"])
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        workers = [asyncio.create_task(client()) for _ in range(8)]
        try:
            await wait_readyz(c, jg.url, 503)
            lock.execute("COMMIT")
            lock.close()
            await wait_readyz(c, jg.url, 200)  # while the clients keep sending
            assert not any(w.done() for w in workers)
            status, check = await ledger_check(c, jg.url)
            assert status == 200 and check["ok"] is True and "buffered_rows" not in check
            after = len(served)
            await eventually(lambda: len(served) > after + 20)  # rows now go straight in
            assert (await ledger_check(c, jg.url))[0] == 200
        finally:
            stop.set()
            await asyncio.gather(*workers)
    ids = [r["request_id"] for r in db_rows(path)]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(served)


async def test_rows_the_fallback_file_refuses_are_counted_as_memory_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.sqlite3"
    (tmp_path / "a-file").write_text("not a folder")
    ledger = fast(path, fallback_path=tmp_path / "a-file" / "p.jsonl")
    await ledger.open(serving=True)
    try:
        with write_locked(path), caplog.at_level("ERROR", "joulegate.ledger"):
            await ledger.append(row(1))
            await ledger.append(row(2))
            health = ledger.health()
            assert not ledger.accepting_rows
        assert health["memory_only_rows"] == 2 and health["fallback_rows"] == 0
        assert health["buffered_rows"] == 2 and "NotADirectoryError" in health["fallback_error"]
        assert "2 rows are held only in memory" in caplog.text
        await eventually(lambda: not ledger.degraded)
        assert ledger.accepting_rows and "memory_only_rows" not in ledger.health()
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d1", "d2"]


async def test_memory_only_rows_are_filed_once_the_file_takes_rows_again(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    folder = tmp_path / "not-yet"
    ledger = fast(path, fallback_path=folder / "p.jsonl")
    await ledger.open(serving=True)
    try:
        with write_locked(path):
            await ledger.append(row(1))
            assert ledger.health()["memory_only_rows"] == 1 and not ledger.accepting_rows
            folder.mkdir()  # e.g. space freed on the disk
            await eventually(lambda: ledger.health()["memory_only_rows"] == 0)
            assert ledger.degraded and ledger.accepting_rows
            filed = [msgspec.json.decode(x) for x in (folder / "p.jsonl").read_bytes().split()]
            assert [x["request_id"] for x in filed] == ["d1"]
        await eventually(lambda: not ledger.degraded)
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d1"]
    assert not (folder / "p.jsonl").exists()


@pytest.mark.parametrize("require_durable", [True, False])
async def test_require_durable_refuses_requests_while_no_row_could_be_kept(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path, require_durable: bool
) -> None:
    path = tmp_path / "l.sqlite3"
    (tmp_path / "a-file").write_text("not a folder")
    ledger_settings = LedgerSettings(path=str(path), busy_timeout_s=0.05, retry_s=0.05,
                                     fallback_path=str(tmp_path / "a-file" / "p.jsonl"),
                                     require_durable=require_durable)  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), ledger=ledger_settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/chat/completions"
        with write_locked(path):
            first = await c.post(url, json=CHAT)  # its row is held only in memory
            status, check = await ledger_check(c, jg.url)
            second = await c.post(url, json=CHAT)
        assert first.status_code == 200
        assert status == 503 and check["memory_only_rows"] == 1 and check["fallback_rows"] == 0
        if require_durable:
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            error = second.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "ledger_unavailable")
            assert posts(fake) == 1  # refused before it reached the backend
        else:
            assert second.status_code == 200 and posts(fake) == 2
        await wait_readyz(c, jg.url, 200)
        third = await c.post(url, json=CHAT)
    assert third.status_code == 200
    assert len(db_rows(path)) == (2 if require_durable else 3)


async def test_an_empty_fallback_file_is_removed_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fallback = path.with_name(path.name + ".pending.jsonl")
    fallback.write_bytes(b"")  # left by a run whose first write to it failed
    ledger = fast(path)
    await ledger.open(serving=True)
    try:
        assert not ledger.degraded and not fallback.exists()
    finally:
        await ledger.close()


async def test_no_empty_fallback_file_is_left_after_recovering_from_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.sqlite3"

    def disk_full(file: Path, data: bytes) -> None:
        file.open("ab").close()  # opening for append creates the file, writing fails
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    ledger = fast(path)
    await ledger.open(serving=True)
    try:
        with write_locked(path):
            monkeypatch.setattr(spill_module, "_append", disk_full)
            await ledger.append(row(1))
            assert ledger.fallback_path.stat().st_size == 0
        await eventually(lambda: not ledger.degraded)
        assert not ledger.fallback_path.exists()
    finally:
        await ledger.close()
    assert [r["request_id"] for r in db_rows(path)] == ["d1"]
