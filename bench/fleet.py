"""A fleet on one ledger: four joulegates at 50 requests/s each into one PostgreSQL.

Each joulegate is ``python -m bench.serve full`` (every default stage, its own
process and fallback file) in front of one fake backend (``bench.serve fake``); all
four write to one database on a local PostgreSQL (``fsync = on``) that the benchmark
starts (:mod:`bench.pg`). The client here sends an open-loop schedule (requests at
fixed times, not one after another, so a slow host cannot slow its own load down)
with aiohttp, for 60 s (``--quick``: 10 s). It reports:

* the rate each host and the fleet achieved (answered 200 per second), and how late
  the client sent (a starved client would understate the load);
* the response latency (p50/p99), which includes the row's commit: the record stage
  commits before the response's last byte;
* the lag: how long after a response its row is visible to another connection
  (every 10th response is looked up until found; a row the first query finds was
  committed before the response, and the figure is that query's round trip), how
  many answered requests had no row yet at any moment (sampled every 100 ms), and
  the rows held in the hosts' spill (``/readyz``, every second);
* the commit of one row (p50/p99) by a fifth writer while the fleet loads the server.

Run with ``python -m bench.fleet [--hosts N] [--rate R] [--seconds S] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from accounting.ledger.postgres import PostgresLedger
from bench import pg
from bench.ledger import bench_row, percentile_ms, print_results
from bench.ledger_pg import create_database, postgres
from bench.serve import spawn, spawn_process

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
PROBE_EVERY = 10
"""Every how many answered requests the lag probe looks the row up."""

Result = tuple[str, str, str]
_FLEET_ROWS = "SELECT count(*) FROM requests WHERE request_id NOT LIKE 'bench-%'"
"""Rows the joulegates wrote (the fifth writer's are ``bench-N``)."""


@dataclass
class Tally:
    """What the load saw, filled in as it runs."""

    latency_s: list[float] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)
    failed: Counter[int] = field(default_factory=Counter)
    """Answers other than 200 by status (0: no answer)."""
    answered_ids: list[str] = field(default_factory=list)
    visible_after_s: list[float] = field(default_factory=list)
    first_try: int = 0
    """Look-ups that found the row at once: it was committed before the response."""
    probes: set[asyncio.Task[None]] = field(default_factory=set)


async def _request(
    http: aiohttp.ClientSession, url: str, host: int, tally: Tally, pool: asyncpg.Pool
) -> None:
    t0 = time.perf_counter()
    try:
        async with http.post(url + "/v1/chat/completions", json=CHAT) as response:
            await response.read()
            status, request_id = response.status, response.headers.get("x-request-id", "")
    except aiohttp.ClientError:
        status, request_id = 0, ""
    done = time.perf_counter()
    if status != 200:
        tally.failed[status] += 1
        return
    tally.latency_s.append(done - t0)
    tally.answered_ids.append(request_id)
    tally.ok[host] += 1
    if sum(tally.ok) % PROBE_EVERY == 0:
        task = asyncio.create_task(_look_up(pool, request_id, done, tally))
        tally.probes.add(task)
        task.add_done_callback(tally.probes.discard)


async def _look_up(pool: asyncpg.Pool, request_id: str, answered: float, tally: Tally) -> None:
    # Polling is the point here: another connection asks until the row is there.
    sql = "SELECT 1 FROM requests WHERE request_id = $1"
    tries = 1
    while not await pool.fetchval(sql, request_id):
        await asyncio.sleep(0.001)
        tries += 1
    tally.visible_after_s.append(time.perf_counter() - answered)
    tally.first_try += tries == 1


async def _host_load(
    http: aiohttp.ClientSession, url: str, host: int, rate: float, seconds: float,
    tally: Tally, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    start = time.perf_counter()
    sent = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tally.late_s.append(max(0.0, time.perf_counter() - due))
        sent.append(asyncio.create_task(_request(http, url, host, tally, pool)))
    await asyncio.gather(*sent)


@dataclass
class Watch:
    """Samples of the backlog while the load runs."""

    unrecorded_max: int = 0
    held_max: int = 0
    degraded_samples: int = 0


async def _watch_rows(pool: asyncpg.Pool, tally: Tally, watch: Watch, stop: asyncio.Event) -> None:
    while not stop.is_set():
        # Answers first: each one counted was answered before the count below began,
        # so a row committed before its answer is in that count.
        answered = sum(tally.ok)
        rows = int(await pool.fetchval(_FLEET_ROWS))
        watch.unrecorded_max = max(watch.unrecorded_max, answered - rows)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _watch_spill(
    http: aiohttp.ClientSession, urls: list[str], watch: Watch, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for url in urls:
            async with http.get(url + "/readyz") as response:
                checks = json.loads(await response.read())["checks"]
            (ledger,) = [c for c in checks if c["name"] == "ledger"]
            if not ledger["ok"]:
                watch.degraded_samples += 1
                held = ledger.get("buffered_rows", 0) + ledger.get("fallback_rows", 0)
                watch.held_max = max(watch.held_max, held)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _commit_probe(ledger: PostgresLedger, stop: asyncio.Event, out: list[float]) -> None:
    n = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        await ledger.append(bench_row(n))
        out.append(time.perf_counter() - t0)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _cpu_s(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far (Linux ``/proc``); a
    process that is gone is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings (a process started between them counts whole)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _server_pids(server: pg.PgServer) -> list[int]:
    """The postmaster and its children (the backends of every connection, the WAL
    writer, the checkpointer...), as they are now."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]


def _p50_p99(samples_s: list[float]) -> str:
    if not samples_s:
        return "no samples"
    return (
        f"p50 {percentile_ms(samples_s, 0.5):.2f} ms, p99 {percentile_ms(samples_s, 0.99):.2f} ms"
    )


async def _drive(
    hosts: list[tuple[str, int]],
    server: pg.PgServer,
    db: str,
    rate: float,
    seconds: float,
    tmp: Path,
) -> list[Result]:
    urls, pids = [u for u, _ in hosts], [p for _, p in hosts]
    tally, watch, stop = Tally(ok=[0] * len(urls)), Watch(), asyncio.Event()
    commits: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        asyncpg.create_pool(db, min_size=2, max_size=4) as pool,
        aiohttp.ClientSession(connector=connector) as http,
        PostgresLedger(db, fallback_path=tmp / "probe.jsonl") as probe,
    ):
        watchers = [
            asyncio.create_task(_watch_rows(pool, tally, watch, stop)),
            asyncio.create_task(_watch_spill(http, urls, watch, stop)),
            asyncio.create_task(_commit_probe(probe, stop, commits)),
        ]
        t0, cpu0, client0 = time.perf_counter(), _cpu_s(pids), time.process_time()
        pg0 = _cpu_s(_server_pids(server))
        await asyncio.gather(
            *(_host_load(http, u, i, rate, seconds, tally, pool) for i, u in enumerate(urls))
        )
        elapsed = time.perf_counter() - t0
        hosts_cpu_s, client_cpu_s = _used_s(cpu0, _cpu_s(pids)), time.process_time() - client0
        pg_cpu_s = _used_s(pg0, _cpu_s(_server_pids(server)))
        load_1m = os.getloadavg()[0]
        await asyncio.gather(*tally.probes)
        stop.set()
        await asyncio.gather(*watchers)
        total = int(await pool.fetchval(_FLEET_ROWS))
        kept = int(await pool.fetchval(
            "SELECT count(DISTINCT request_id) FROM requests WHERE request_id = ANY($1::text[])",
            tally.answered_ids,
        ))  # fmt: skip
    answered = sum(tally.ok)
    per_host = ", ".join(f"{n / elapsed:.1f}" for n in tally.ok)
    failed = ", ".join(f"{n} with {s or 'no answer'}" for s, n in sorted(tally.failed.items()))
    return [
        (f"achieved rate, {len(urls)} hosts x {rate:g}/s offered for {seconds:g} s",
         f"{answered / elapsed:.1f} requests/s ({per_host} per host)",
         f"{answered:,} answered 200 in {elapsed:.1f} s; failed: {failed or 'none'}"),
        ("CPU per request: the joulegates, PostgreSQL, the client",
         " + ".join(f"{t / max(1, answered) * 1000:.2f} ms"
                    for t in (hosts_cpu_s, pg_cpu_s, client_cpu_s)),
         f"{hosts_cpu_s:.1f} + {pg_cpu_s:.1f} + {client_cpu_s:.1f} CPU-s in {elapsed:.0f} s"
         f" on {os.cpu_count()} cores; load average {load_1m:.1f} at the end"),
        ("client lateness against its schedule",
         _p50_p99(tally.late_s),
         "how late requests were sent (the client shares the cores)"),
        ("response latency (the row's commit included)",
         _p50_p99(tally.latency_s),
         f"{answered:,} requests"),
        ("lag: response to row visible on another connection",
         _p50_p99(tally.visible_after_s),
         f"every {PROBE_EVERY}th response looked up; {tally.first_try} of"
         f" {len(tally.visible_after_s)} found at the first query (its round trip is the lag)"),
        ("backlog: answered requests without a row yet", f"at most {watch.unrecorded_max}",
         "sampled every 100 ms"),
        ("backlog: rows held in the hosts' spill", f"at most {watch.held_max}",
         f"{watch.degraded_samples} degraded /readyz samples"),
        ("answered requests with their row after the run", f"{kept:,} of {answered:,}",
         f"{total:,} rows from the fleet in all (refused requests have none)"),
        ("commit 1 row while the fleet writes (a fifth writer)",
         _p50_p99(commits),
         f"{len(commits)} rows, one every 50 ms"),
    ]  # fmt: skip


async def run(hosts: int, rate: float, seconds: float) -> list[Result]:
    """Start PostgreSQL, the fake backend and the fleet; measure; table rows."""
    with tempfile.TemporaryDirectory() as tmp, postgres() as server:
        if server is None:
            return [("PostgreSQL", "not measured", "no initdb/pg_ctl on this machine")]
        db = await create_database(server, "fleet")
        async with PostgresLedger(db, fallback_path=Path(tmp) / "migrate.jsonl"):
            pass  # migrated once here, not raced by four hosts starting at once
        with spawn("bench.serve", "fake", "PORT") as fake, contextlib.ExitStack() as stack:
            fleet = []
            for i in range(hosts):
                spill = f"{tmp}/host{i}.pending.jsonl"
                env = {"JOULEGATE_LEDGER_URL": db, "JOULEGATE_LEDGER_FALLBACK_PATH": spill}
                argv = ("bench.serve", "full", "PORT", fake)
                fleet.append(stack.enter_context(spawn_process(argv, env)))
            return await _drive(fleet, server, db, rate, seconds, Path(tmp))


async def main(hosts: int = 4, rate: float = 50.0, seconds: float = 60.0) -> None:
    """Run the fleet benchmark and print a Markdown table."""
    results = await run(hosts, rate, seconds)
    print_results(f"Fleet: {hosts} joulegates, one PostgreSQL (2 cores shared)", results)


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--hosts", type=int, default=4, help="joulegate processes")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s offered per host")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    args = parser.parse_args(argv)
    asyncio.run(main(args.hosts, args.rate, 10.0 if args.quick else args.seconds))


if __name__ == "__main__":
    _cli()
