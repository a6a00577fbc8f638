"""The ledger's writer thread: calls start at once, run in order, fail to their caller."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from accounting.ledger.sqlite_thread import SqliteThread


async def test_calls_run_in_the_order_submitted_and_return_their_results(tmp_path: Path) -> None:
    writer = SqliteThread(tmp_path / "w.sqlite3", ["PRAGMA journal_mode = WAL"])
    await writer.open()
    try:
        await writer.call(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
        # Submitted without awaiting in between: each starts before the next is submitted.
        futures = [
            writer.submit(lambda db, n=n: db.execute("INSERT INTO t VALUES (?)", (n,)).rowcount)
            for n in range(50)
        ]
        assert await asyncio.gather(*futures) == [1] * 50
        rows = await writer.call(lambda db: db.execute("SELECT n FROM t").fetchall())
        assert [n for (n,) in rows] == list(range(50))
    finally:
        await writer.close()


async def test_an_error_reaches_the_caller_and_the_thread_goes_on(tmp_path: Path) -> None:
    writer = SqliteThread(tmp_path / "w.sqlite3")
    await writer.open()
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await writer.call(lambda db: db.execute("INSERT INTO missing VALUES (1)"))
        assert await writer.call(lambda db: db.execute("SELECT 41 + 1").fetchone()) == (42,)
    finally:
        await writer.close()


async def test_close_lets_submitted_calls_finish_then_refuses_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    writer = SqliteThread(path)
    await writer.open()
    await writer.call(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
    pending = [
        writer.submit(lambda db, n=n: db.execute("INSERT INTO t VALUES (?)", (n,)).rowcount)
        for n in range(10)
    ]
    await writer.close()
    assert await asyncio.gather(*pending) == [1] * 10
    with pytest.raises(sqlite3.OperationalError, match="closed"):
        writer.submit(lambda db: None)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (10,)


async def test_a_file_that_cannot_be_opened_fails_open(tmp_path: Path) -> None:
    writer = SqliteThread(tmp_path / "no-such-folder" / "w.sqlite3")
    with pytest.raises(sqlite3.OperationalError):
        await writer.open()
    with pytest.raises(sqlite3.OperationalError):
        writer.submit(lambda db: None)


@pytest.mark.parametrize("fails", [True, False])
async def test_a_cancelled_call_goes_on_and_only_its_failure_is_told(
    tmp_path: Path, fails: bool
) -> None:
    writer = SqliteThread(tmp_path / "w.sqlite3")
    await writer.open()
    told: list[BaseException] = []
    try:
        await writer.call(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
        table = "missing" if fails else "t"
        waited = writer.submit(
            lambda db: db.execute(f"INSERT INTO {table} VALUES (1)"), orphaned=told.append
        )
        waited.cancel()
        told_too_early = list(told)
        # Calls run in order: once the next one is back, the cancelled one has run.
        count = await writer.call(lambda db: db.execute("SELECT count(*) FROM t").fetchone())
        await asyncio.sleep(0)  # its answer was queued on the loop before the next one's
    finally:
        await writer.close()
    assert told_too_early == []
    assert count == (0 if fails else 1,)
    assert [type(e) for e in told] == ([sqlite3.OperationalError] if fails else [])


async def test_a_failure_with_a_waiter_goes_to_the_waiter_alone(tmp_path: Path) -> None:
    writer = SqliteThread(tmp_path / "w.sqlite3")
    await writer.open()
    told: list[BaseException] = []
    try:
        with pytest.raises(sqlite3.OperationalError):
            await writer.submit(lambda db: db.execute("INSERT INTO missing VALUES (1)"),
                                orphaned=told.append)  # fmt: skip
    finally:
        await writer.close()
    assert told == []
