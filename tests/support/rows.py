"""Ledger rows and ledgers made for tests: by user and time, generated at random, and
a SQLite ledger that gives up quickly; shared by the ledger, budget and report tests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from accounting import LedgerRow, SqliteLedger, iso

UTC = dt.UTC


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def rec(n: int, user: str, when: dt.datetime, energy_j: float, co2e_g: float = 0.0) -> LedgerRow:
    return LedgerRow(request_id=f"b{n}", ts=iso(when), user=user, endpoint="chat/completions",
                     energy_j=energy_j, co2e_g=co2e_g)  # fmt: skip


def row(n: int) -> LedgerRow:
    return LedgerRow(request_id=f"d{n}", ts=f"2025-03-01T00:00:{n:02d}.000000Z", user="alice",
                     endpoint="chat/completions", energy_j=1.0)  # fmt: skip


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process holding the database's write lock (``BEGIN EXCLUSIVE``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


async def eventually(check: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def fast(path: Path, **kw: object) -> SqliteLedger:
    return SqliteLedger(path, busy_timeout_s=0.05, retry_s=0.05, **kw)  # type: ignore[arg-type]


USERS = ("alice", "bob", "carol")


MODELS = ("small", "large")


def generated(n: int = 600, seed: int = 7) -> list[LedgerRow]:
    """Rows over Feb-Apr 2025 with awkward floats, missing figures and failures."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        day = rnd.randrange(0, 89)
        month, mday = (2, day + 1) if day < 28 else ((3, day - 27) if day < 59 else (4, day - 58))
        hour = rnd.randrange(24)
        rows.append(LedgerRow(
            request_id=f"g{i}", ts=f"2025-{month:02d}-{mday:02d}T{hour:02d}:00:00.000000Z",
            user=rnd.choice(USERS), endpoint=rnd.choice(("chat/completions", "embeddings")),
            model_requested=rnd.choice(MODELS), model_served=rnd.choice((None, "served")),
            prompt_tokens=rnd.randrange(100), completion_tokens=rnd.randrange(50),
            duration_s=rnd.random(), energy_j=None if i % 17 == 0 else rnd.random() * 1e4,
            energy_dynamic_j=rnd.random() * 1e3, co2e_g=None if i % 13 == 0 else rnd.random(),
            failure="client_disconnected" if i % 11 == 0 else None,
        ))  # fmt: skip
    return rows
