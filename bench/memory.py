"""joulegate's peak memory under what clients and backends can throw at it.

Each case gets a fresh ``python -m proxy.cli serve`` (as in production, with its
default bounds) in front of the bench fake backend, so that the process's high-water
mark (``VmHWM`` in ``/proc/PID/status``) is that case's alone:

- idle: started, nothing asked;
- 30 queued 15 MiB bodies: the gate's one slot held by a slow request, then 30
  clients post a 15 MiB chat body at once; ``max_queued_bytes`` (256 MiB) lets some
  wait and turns the rest away with ``503``;
- 40 unfinished 4 MiB headers over raw sockets: ``431`` past ``max_header_bytes``;
- one 200 MiB non-streamed answer from the backend: relayed unparsed past
  ``max_parsed_answer_bytes`` (32 MiB);
- 10,000 requests with random model names: the metrics' labels stay bounded
  (``other``), so memory should not grow with them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.serve import spawn, spawn_process

MiB = 1024 * 1024
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
HOLD = {"x-fake-hold": "1"}


@dataclass(frozen=True)
class Target:
    """The joulegate under test and the fake backend behind it."""

    url: str
    backend: str
    pid: int


Case = Callable[[Target], Awaitable[tuple[int, str]]]
"""A case: send its load and return the number of requests sent and what they got."""


def status_mb(pid: int, field: str) -> float:
    """One memory line of ``/proc/PID/status`` (``VmHWM``: the peak resident memory
    so far; ``VmRSS``: now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def outcome(statuses: collections.Counter[str]) -> str:
    """``200 x 17, 503 x 13``: how many got each status (or error)."""
    return ", ".join(f"{k} x {n:,}" for k, n in sorted(statuses.items()))


async def _wait_for(url: str, ok: Callable[[dict[str, int]], bool], timeout_s: float) -> None:
    """Poll ``/healthz`` until ``ok`` holds for its numbers."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as c:
        while time.monotonic() < deadline:
            async with c.get(url + "/healthz") as r:
                if ok(await r.json()):
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url}/healthz: the expected state never came")


async def _post(c: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> str:
    """POST a chat body; its status, or the error that took its place."""
    try:
        async with c.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
            await r.read()
            return str(r.status)
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def idle(t: Target) -> tuple[int, str]:
    """Nothing asked: the baseline after start-up."""
    await asyncio.sleep(1)
    return 0, "-"


async def queued_bodies(t: Target, clients: int = 30) -> tuple[int, str]:
    """The slot held by one slow request, then ``clients`` 15 MiB bodies at once."""
    url = t.url
    pad = 15 * MiB - len(json.dumps(CHAT))
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * pad}]}).encode()
    json_type = {"content-type": "application/json"}
    small = json.dumps(CHAT).encode()
    statuses: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as c:
        holder = asyncio.create_task(_post(c, url, small, {**json_type, **HOLD}))
        await _wait_for(url, lambda h: h["in_flight"] == 1, 10)
        tasks = [asyncio.create_task(_post(c, url, body, json_type)) for _ in range(clients)]
        # Every body either waits in the queue or was turned away.
        await _wait_for(
            url, lambda h: h["waiting"] + sum(task.done() for task in tasks) >= clients, 60
        )
        queued_mb = status_mb(t.pid, "VmRSS")
        async with c.post(t.backend + "/fake/release") as r:
            r.raise_for_status()
        statuses.update(await asyncio.gather(*tasks))
        statuses[f"{await holder} (slot holder)"] += 1
    return clients + 1, f"{outcome(statuses)}; {queued_mb:.0f} MB resident while queued"


async def _big_header(host: str, port: int, size: int) -> str:
    """Send the start of a request whose headers never end, ``size`` bytes of it unless
    an answer comes first; the status it got."""
    reader, writer = await asyncio.open_connection(host, port)
    answer = asyncio.create_task(reader.read(64))
    piece = b"a" * (64 * 1024)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: ")
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
            # A short look for the answer between pieces: a socket closed with bytes
            # unread sends a reset, and a reset throws away the 431 before it is read.
            await asyncio.wait({answer}, timeout=0.01)
            if answer.done():
                break
        head = await asyncio.wait_for(answer, 30)
    except (ConnectionError, TimeoutError) as exc:
        head = type(exc).__name__.encode()
    finally:
        answer.cancel()
        writer.close()
    return head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else head.decode()


async def big_headers(t: Target, clients: int = 40) -> tuple[int, str]:
    """``clients`` connections at once, each sending an unfinished 4 MiB header."""
    host, port = t.url.removeprefix("http://").split(":")
    got = await asyncio.gather(*(_big_header(host, int(port), 4 * MiB) for _ in range(clients)))
    return clients, outcome(collections.Counter(got))


async def huge_answer(t: Target, size: int = 200 * MiB) -> tuple[int, str]:
    """One non-streamed answer of ``size`` bytes of content, read as it comes."""
    headers = {"x-fake-content-bytes": str(size)}
    received = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as c,
        c.post(t.url + "/v1/chat/completions", json=CHAT, headers=headers) as r,
    ):
        async for chunk in r.content.iter_any():
            received += len(chunk)
        status = r.status
    return 1, f"{status} x 1 ({received / MiB:.0f} MiB relayed)"


async def random_models(t: Target, n: int = 10_000, clients: int = 16) -> tuple[int, str]:
    """``n`` chats, each naming a model nobody serves, ``clients`` at a time."""
    url = t.url
    statuses: collections.Counter[str] = collections.Counter()
    rng = random.Random(0)
    models = [f"model-{rng.getrandbits(64):016x}" for _ in range(n)]
    json_type = {"content-type": "application/json"}

    async def worker(c: aiohttp.ClientSession) -> None:
        while models:
            body = json.dumps({**CHAT, "model": models.pop()}).encode()
            statuses[await _post(c, url, body, json_type)] += 1

    async with aiohttp.ClientSession() as c:
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        async with c.get(url + "/metrics") as r:
            text = await r.text()
    labels = {
        part.split('"')[1]
        for line in text.splitlines()
        if not line.startswith("#")
        for part in line.split(",")
        if part.lstrip("{").startswith('model="')
    }
    return n, f"{outcome(statuses)}; /metrics model labels: {', '.join(sorted(labels))}"


CASES: list[tuple[str, Case]] = [
    ("idle", idle),
    ("30 queued 15 MiB bodies", queued_bodies),
    ("40 unfinished 4 MiB headers", big_headers),
    ("one 200 MiB non-streamed answer", huge_answer),
    ("10,000 random model names", random_models),
]


def joulegate_env(backend: str, folder: str) -> dict[str, str]:
    """Defaults, but for where to listen, the backend, the ledger and quiet logs."""
    return {
        "JOULEGATE_PORT": "PORT",
        "JOULEGATE_BACKEND_URL": backend,
        "JOULEGATE_LEDGER_PATH": os.path.join(folder, "ledger.sqlite3"),
        "JOULEGATE_LOG_LEVEL": "warning",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }


async def main() -> None:
    """Run every case in a fresh joulegate and print the table."""
    # The caller's own JOULEGATE_* and OTEL_* settings would change the bounds measured.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOULEGATE_", "OTEL_"))}
    rows = []
    with spawn("bench.serve", "fake", "PORT") as backend:
        for name, case in CASES:
            with tempfile.TemporaryDirectory(prefix="joulegate-bench-") as folder:
                env = joulegate_env(backend, folder)
                with spawn_process(["proxy.cli", "serve"], env, base) as (url, pid):
                    started_s = time.monotonic()
                    requests, got = await case(Target(url, backend, pid))
                    rows.append((name, requests, got, status_mb(pid, "VmHWM")))
            took_s = time.monotonic() - started_s
            print(f"  memory: {name} took {took_s:.1f} s", file=sys.stderr)
    print("\n### Peak memory per case (VmHWM of a fresh joulegate, default bounds)\n")
    print("| case | requests | outcome (statuses) | peak RSS MB |")
    print("|---|---|---|---|")
    for name, requests, got, peak in rows:
        print(f"| {name} | {requests:,} | {got} | {peak:.1f} |")
