"""Benchmark of the ledger: the commit each request pays, and reports on a big ledger.

1. Write cost per request: :meth:`SqliteLedger.append` (one row, committed, as the
   record stage does before a response's last byte) on a fresh file, with
   ``synchronous = normal`` (the default) and ``full``, then into the
   1,000,000-row ledger. p50 and p99 in milliseconds.
2. Report time over a generated ledger of 1,000,000 rows (three months, 50
   users with Zipf-skewed traffic, so the busiest user has about a fifth of
   all rows): the monthly per-user report that ``GET /v1/energy/report`` and
   ``joulegate report --user U --month M`` run, for the busiest and a median
   user (target: at most 300 ms), plus a month for everyone and the whole
   ledger by day, and the budget totals joulegate loads at start-up.

Run with ``python -m bench.ledger [--rows N]`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import datetime as dt
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from accounting import LedgerRow, SqliteLedger, iso, utcnow
from accounting.budgets import BudgetBook
from accounting.ledger import Ledger
from accounting.reports import build_report, parse_query

USERS = [f"user{i:02d}" for i in range(50)]
MODELS = ("smollm2-135m", "llama-3.1-8b", "qwen2.5-7b")
TARGET_MS = 300.0


def bench_row(n: int) -> LedgerRow:
    """A typical finished request's row, ``bench-N``, as the record stage writes it."""
    return LedgerRow(
        request_id=f"bench-{n}", ts=iso(utcnow()), user="alice", endpoint="chat/completions",
        model_requested="m", model_served="m", status=200, stream=True, prompt_tokens=20,
        completion_tokens=100, queue_s=0.0, thermal_wait_s=0.0, duration_s=0.8,
        energy_j=120.5, energy_dynamic_j=80.25, energy_components_j={"gpu": 100.0, "cpu": 20.5},
        meter="nvml+rapl", carbon_intensity_g_per_kwh=56.0, carbon_source="table:FR",
        co2e_g=0.0019, sci_g=0.002, trace_id="0af7651916cd43dd8448eb211c80319c",
        request_params={"max_tokens": 100, "messages_count": 2},
    )  # fmt: skip


def percentile_ms(samples: list[float], q: float) -> float:
    """The ``q`` quantile of durations in seconds, in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def append_cost(ledger: Ledger, count: int, start: int) -> tuple[float, float]:
    """p50 and p99 (ms) of committing ``count`` rows one by one, ids from ``start``."""
    samples = []
    for n in range(start, start + count):
        row = bench_row(n)
        t0 = time.perf_counter()
        await ledger.append(row)
        samples.append(time.perf_counter() - t0)
    return percentile_ms(samples, 0.5), percentile_ms(samples, 0.99)


GENERATED_COLUMNS = (
    "request_id", "ts", "finished_ts", "user", "endpoint", "model_requested", "model_served",
    "status", "stream", "prompt_tokens", "completion_tokens", "queue_s", "thermal_wait_s",
    "duration_s", "energy_j", "energy_dynamic_j", "meter", "carbon_intensity_g_per_kwh",
    "carbon_source", "co2e_g",
)  # fmt: skip
"""The columns :func:`generated_rows` fills, in order."""


def generated_rows(rows: int, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """``rows`` rows over three months (2025-01 to 2025-03), 50 users with Zipf-skewed
    traffic; :data:`GENERATED_COLUMNS` of each. The same seed gives the same rows."""
    rnd = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(USERS))]
    start = calendar.timegm((2025, 1, 1, 0, 0, 0))
    span_s = 90 * 86400
    users = rnd.choices(USERS, weights, k=rows)
    for n in range(rows):
        t = start + span_s * n / rows
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{n % 1_000_000:06d}Z"
        energy = rnd.uniform(5, 500)
        yield (f"gen-{n}", ts, ts, users[n], "chat/completions", MODELS[n % 3], MODELS[n % 3],
               200, n % 2, 20 + n % 50, 10 + n % 200, 0.0, 0.0, energy / 150, energy,
               energy * 0.7, "nvml", 56.0, "table:FR", energy * 56 / 3.6e6)  # fmt: skip


def generate_sqlite(path: Path, rows: int, seed: int = 1) -> None:
    """Fill the SQLite file with :func:`generated_rows`, executemany in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO requests ({', '.join(GENERATED_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(GENERATED_COLUMNS))})",
            generated_rows(rows, seed),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def timed(fn: Callable[[], Awaitable[object]], repeat: int = 5) -> tuple[float, float]:
    """Median and worst (ms) of ``repeat`` awaits of ``fn()``."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000, max(samples) * 1000


async def run(rows: int, writes: int) -> list[tuple[str, str, str]]:
    """Measure; Markdown table rows (what, figure, note)."""
    out: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("normal", "full"):
            async with SqliteLedger(Path(tmp) / f"fresh-{sync}.sqlite3", synchronous=sync) as fresh:
                p50, p99 = await append_cost(fresh, writes, 0)
            out.append((f"append 1 row, fresh file, synchronous={sync}",
                        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms", f"{writes} rows"))  # fmt: skip

        big = Path(tmp) / "big.sqlite3"
        async with SqliteLedger(big):
            pass
        t0 = time.perf_counter()
        generate_sqlite(big, rows)
        gen_s = time.perf_counter() - t0
        out.append((f"generate {rows:,} rows (executemany, 1 transaction)", f"{gen_s:.1f} s",
                    f"{big.stat().st_size / 2**20:.0f} MiB"))  # fmt: skip

        async with SqliteLedger(big) as ledger:
            counts = await ledger.fetchall(
                "SELECT user, COUNT(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY user"
                " ORDER BY COUNT(*) DESC",
                ("2025-02-01", "2025-03-01"),
            )
            busiest, median = counts[0], counts[len(counts) // 2]
            for label, (user, n) in (("busiest", busiest), ("median", median)):
                query = parse_query({"user": user, "month": "2025-02", "by": "model"})
                p50, worst = await timed(lambda q=query: build_report(ledger, q))  # type: ignore[misc]
                verdict = "meets" if worst <= TARGET_MS else "MISSES"
                out.append((f"monthly report, one user by model ({label}: {n:,} rows that month)",
                            f"median {p50:.1f} ms, max {worst:.1f} ms",
                            f"{verdict} the {TARGET_MS:.0f} ms target"))  # fmt: skip
            everyone = parse_query({"month": "2025-02", "by": "user"})
            p50, worst = await timed(lambda: build_report(ledger, everyone), repeat=3)
            out.append(("monthly report, every user by user", f"median {p50:.0f} ms",
                        f"{sum(c[1] for c in counts):,} rows"))  # fmt: skip
            by_day = parse_query({"by": "day"})
            p50, worst = await timed(lambda: build_report(ledger, by_day), repeat=3)
            out.append(("whole ledger by day", f"median {p50:.0f} ms", f"{rows:,} rows"))
            book = BudgetBook(ledger)
            now = dt.datetime(2025, 3, 31, 12, tzinfo=dt.UTC)  # the generated data's "today"
            p50, _ = await timed(lambda: book.load(now), repeat=3)
            out.append(("budget totals loaded at start-up (day + month)", f"median {p50:.0f} ms",
                        "once per start"))  # fmt: skip
            p50, p99 = await append_cost(ledger, writes, 10**9)
            out.append((f"append 1 row into the {rows:,}-row ledger",
                        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms", f"{writes} rows"))  # fmt: skip
    return out


def print_results(title: str, results: list[tuple[str, str, str]]) -> None:
    """``(what, figure, note)`` rows as a Markdown table under a heading."""
    print(f"\n### {title}\n")
    print("| what | measured | note |")
    print("| --- | --- | --- |")
    for what, figure, note in results:
        print(f"| {what} | {figure} | {note} |")


async def main(rows: int = 1_000_000, writes: int = 2000) -> None:
    """Run the ledger benchmark and print a Markdown table."""
    results = await run(rows, writes)
    print_results("SqliteLedger: write cost per request and report time (2 cores shared)", results)


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the big ledger")
    parser.add_argument("--writes", type=int, default=2000, help="appends timed per case")
    args = parser.parse_args(argv)
    asyncio.run(main(args.rows, args.writes))


if __name__ == "__main__":
    _cli()
