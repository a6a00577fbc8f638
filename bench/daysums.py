"""Benchmark: what the day-sums triggers (:mod:`accounting.ledger.daysums`) cost a write.

Side by side in one run, on two fresh ledgers that differ only in the triggers (on
the second they are dropped): the commit of one row, as the record stage does
before a response's last byte, alternating between the two ledgers so that both
see the same machine load; and a batch of rows in one transaction (a replayed
fallback file, an import). On PostgreSQL (a local server, ``fsync = on``) also
many connections committing rows of one busy cell at once, with the triggers, with
every connection writing to one ``slot`` of the cell, and without the triggers.

Run with ``python -m bench.daysums [--writes N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from accounting import SqliteLedger
from accounting.ledger import Ledger
from accounting.ledger.daysums import PG_MIGRATION
from accounting.ledger.postgres import PostgresLedger
from bench.ledger import bench_row, percentile_ms, print_results
from bench.ledger_pg import create_database, postgres

Result = tuple[str, str, str]
_SQLITE_DROP = tuple(
    f"DROP TRIGGER request_day_sums_{event}" for event in ("insert", "update", "delete")
)
_PG_DROP = tuple(
    f"DROP TRIGGER request_day_sums_{event} ON requests" for event in ("insert", "update", "delete")
)
_ONE_SLOT = tuple(
    s.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").replace("pg_backend_pid() % 16", "0")
    for s in PG_MIGRATION
    if s.startswith("CREATE FUNCTION request_day_sums_")
)


async def _side_by_side(with_: Ledger, without: Ledger, writes: int) -> list[str]:
    """p50/p99 of one-row commits into each ledger, alternating; then a batch each."""
    samples: tuple[list[float], list[float]] = ([], [])
    for n in range(writes):
        for ledger, out in ((with_, samples[0]), (without, samples[1])):
            t0 = time.perf_counter()
            await ledger.append(bench_row(n))
            out.append(time.perf_counter() - t0)
    figures = [
        f"p50 {percentile_ms(s, 0.5):.3f} ms, p99 {percentile_ms(s, 0.99):.3f} ms" for s in samples
    ]
    for ledger in (with_, without):
        batch = [bench_row(n) for n in range(writes, writes + 20_000)]
        t0 = time.perf_counter()
        await ledger.append_many(batch)
        figures.append(f"{len(batch) / (time.perf_counter() - t0):,.0f} rows/s")
    return figures


def _results(name: str, figures: list[str], writes: int) -> list[Result]:
    return [
        (f"{name}: commit 1 row, with the triggers", figures[0], f"{writes} rows, alternating"),
        (f"{name}: commit 1 row, without them", figures[1], f"{writes} rows, alternating"),
        (f"{name}: 20,000 rows in one transaction, with", figures[2], "a replay, an import"),
        (f"{name}: 20,000 rows in one transaction, without", figures[3], ""),
    ]


async def _sqlite(tmp: Path, writes: int) -> list[Result]:
    out: list[Result] = []
    for sync in ("normal", "full"):
        with_ = SqliteLedger(tmp / f"with-{sync}.sqlite3", synchronous=sync)
        without = SqliteLedger(tmp / f"without-{sync}.sqlite3", synchronous=sync)
        async with with_, without:
            for statement in _SQLITE_DROP:
                await without.write(statement)
            figures = await _side_by_side(with_, without, writes)
        out += _results(f"SQLite, synchronous={sync}", figures, writes)
    return out


async def _busy_cell(ledger: Ledger, writers: int, seconds: float) -> float:
    """Rows per second that ``writers`` concurrent committers get, all into one cell."""
    done = 0
    stop = time.perf_counter() + seconds

    async def writer(k: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop:
            await ledger.append(bench_row(10**9 + k * 10**6 + n))
            n += 1
        done += n

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    return done / (time.perf_counter() - t0)


async def _postgres(tmp: Path, writes: int) -> list[Result]:
    with postgres() as server:
        if server is None:
            return [("PostgreSQL", "not measured", "no initdb/pg_ctl on this machine")]
        with_ = PostgresLedger(await create_database(server, "triggers"), fallback_path=tmp / "w")
        without = PostgresLedger(await create_database(server, "bare"), fallback_path=tmp / "wo")
        one_slot = PostgresLedger(await create_database(server, "oneslot"), fallback_path=tmp / "o")
        async with with_, without, one_slot:
            for statement in _PG_DROP:
                await without.write(statement)
            for statement in _ONE_SLOT:
                await one_slot.write(statement)
            out = _results("PostgreSQL", await _side_by_side(with_, without, writes), writes)
            for label, ledger in (
                ("with the triggers", with_),
                ("with the triggers, one slot per cell", one_slot),
                ("without them", without),
            ):
                rate = await _busy_cell(ledger, 8, 5.0)
                out.append((f"PostgreSQL: 8 connections commit rows of one cell, {label}",
                            f"{rate:,.0f} rows/s", "5 s, fsync=on"))  # fmt: skip
    return out


async def main(writes: int = 2000) -> None:
    """Run the benchmark and print a Markdown table."""
    with tempfile.TemporaryDirectory() as tmp:
        results = await _sqlite(Path(tmp), writes) + await _postgres(Path(tmp), writes)
    print_results("Day sums: what the triggers cost a write (side by side)", results)


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.daysums", description=__doc__)
    parser.add_argument("--writes", type=int, default=2000, help="one-row commits per ledger")
    args = parser.parse_args(argv)
    asyncio.run(main(args.writes))


if __name__ == "__main__":
    _cli()
