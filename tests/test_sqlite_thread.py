"""The ledger's writer thread: calls start at once, run in order, fail to their caller."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from accounting.sqlite_thread import SqliteThread


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
