"""The PostgreSQL ledger beside SQLite, in one run on one machine.

1. The commit each request pays: :meth:`append` of one row (what the record stage
   does before a response's last byte) into a fresh ledger: SQLite with
   ``synchronous = normal`` (the default) and ``full``, and PostgreSQL on a local
   server with its defaults (``fsync = on``, ``synchronous_commit = on``: every
   commit waits for its WAL flush), over TCP on loopback. p50 and p99 in ms.
2. The monthly report of the busiest user (``GET /v1/energy/report``, ``joulegate
   report --user U --month M``) over the same generated 1,000,000 rows in both
   (:func:`bench.ledger.generated_rows`: three months, 50 Zipf-skewed users, the
   busiest with about a fifth of the rows). Target: at most 300 ms. PostgreSQL's
   rows go in by ``COPY``, then ``VACUUM ANALYZE``, as autovacuum leaves an
   append-only table.

The benchmark starts its own PostgreSQL (:mod:`bench.pg`). Run with
``python -m bench.ledger_pg [--rows N] [--writes N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from accounting import SqliteLedger
from accounting.ledger import Ledger
from accounting.ledger.postgres import PostgresLedger
from accounting.reports import build_report, parse_query
from bench import pg
from bench.ledger import (
    GENERATED_COLUMNS,
    TARGET_MS,
    append_cost,
    generate_sqlite,
    generated_rows,
    print_results,
    timed,
)

Result = tuple[str, str, str]


@contextlib.contextmanager
def postgres(*, fsync: bool = True) -> Iterator[pg.PgServer | None]:
    """A throw-away local server (None where PostgreSQL is not installed)."""
    bindir = pg.bin_dir()
    if bindir is None:
        yield None
        return
    with pg.pg_server(bindir, fsync=fsync) as server:
        yield server


async def create_database(server: pg.PgServer, name: str) -> str:
    """A new, empty database on ``server``; its URL."""
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.database_url(name)


async def _pg_generate(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "requests", records=generated_rows(rows), columns=GENERATED_COLUMNS
        )
        await conn.execute("VACUUM ANALYZE requests")
    finally:
        await conn.close()


async def _reports(ledger: Ledger, name: str) -> list[Result]:
    counts = await ledger.fetchall(
        "SELECT user, COUNT(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY user"
        " ORDER BY COUNT(*) DESC, user",
        ("2025-02-01", "2025-03-01"),
    )
    out = []
    for label, (user, n) in (("busiest", counts[0]), ("median", counts[len(counts) // 2])):
        query = parse_query({"user": user, "month": "2025-02", "by": "model"})
        await build_report(ledger, query)  # the first read warms the cache, as in service
        p50, worst = await timed(lambda q=query: build_report(ledger, q))  # type: ignore[misc]
        verdict = "meets" if worst <= TARGET_MS else "MISSES"
        out.append((f"{name}: monthly report of one user by model ({label}, {n:,} rows)",
                    f"median {p50:.1f} ms, max {worst:.1f} ms",
                    f"{verdict} the {TARGET_MS:.0f} ms target"))  # fmt: skip
    return out


async def run(rows: int, writes: int) -> list[Result]:
    """Measure; Markdown table rows (what, figure, note)."""
    out: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, postgres() as server:
        if server is None:
            return [("PostgreSQL", "not measured", "no initdb/pg_ctl on this machine")]
        for sync in ("normal", "full"):
            async with SqliteLedger(Path(tmp) / f"fresh-{sync}.sqlite3", synchronous=sync) as fresh:
                p50, p99 = await append_cost(fresh, writes, 0)
            out.append((f"SQLite: commit 1 row, fresh file, synchronous={sync}",
                        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms", f"{writes} rows"))  # fmt: skip
        url = await create_database(server, "fresh")
        async with PostgresLedger(url, fallback_path=Path(tmp) / "fresh.jsonl") as fresh_pg:
            p50, p99 = await append_cost(fresh_pg, writes, 0)
        out.append(("PostgreSQL: commit 1 row, fresh database, fsync=on",
                    f"p50 {p50:.3f} ms, p99 {p99:.3f} ms", f"{writes} rows"))  # fmt: skip

        big = Path(tmp) / "big.sqlite3"
        async with SqliteLedger(big):
            pass
        t0 = time.perf_counter()
        generate_sqlite(big, rows)
        out.append((f"SQLite: generate {rows:,} rows (executemany, 1 transaction)",
                    f"{time.perf_counter() - t0:.1f} s",
                    f"{big.stat().st_size / 2**20:.0f} MiB"))  # fmt: skip
        big_url = await create_database(server, "big")
        async with PostgresLedger(big_url, fallback_path=Path(tmp) / "big.jsonl") as big_pg:
            t0 = time.perf_counter()
            await _pg_generate(big_url, rows)
            size = await big_pg.fetchall("SELECT pg_total_relation_size('requests')")
            out.append((f"PostgreSQL: generate {rows:,} rows (COPY, then VACUUM ANALYZE)",
                        f"{time.perf_counter() - t0:.1f} s",
                        f"{size[0][0] / 2**20:.0f} MiB with indexes"))  # fmt: skip
            async with SqliteLedger(big) as ledger:
                out += await _reports(ledger, "SQLite")
            out += await _reports(big_pg, "PostgreSQL")
            p50, p99 = await append_cost(big_pg, writes, 10**9)
            out.append((f"PostgreSQL: commit 1 row into the {rows:,}-row ledger",
                        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms", f"{writes} rows"))  # fmt: skip
    return out


async def main(rows: int = 1_000_000, writes: int = 2000) -> None:
    """Run the benchmark and print a Markdown table."""
    results = await run(rows, writes)
    print_results("SqliteLedger: PostgreSQL beside SQLite (same run, 2 cores shared)", results)


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_pg", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the big ledgers")
    parser.add_argument("--writes", type=int, default=2000, help="commits timed per case")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 300 commits")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.writes = 100_000, 300
    asyncio.run(main(args.rows, args.writes))


if __name__ == "__main__":
    _cli()
