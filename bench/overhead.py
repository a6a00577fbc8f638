"""What joulegate adds to each request, and its memory with 500 queued clients.

The fake backend and joulegate each run in their own process (uvicorn, uvloop,
httptools), as in production; the client runs here. Requests alternate between
the backend directly and joulegate in one run, so both see the same machine load.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from bench.serve import spawn

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
STREAM = {**CHAT, "max_tokens": 20, "stream": True}


def process(kind: str, *args: str) -> contextlib.AbstractContextManager[str]:
    """``bench.serve KIND`` in its own process (see :func:`bench.serve.spawn`)."""
    return spawn("bench.serve", kind, "PORT", *args)


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (0-100), in the units of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def _one(c: httpx.AsyncClient, url: str) -> float:
    t = time.perf_counter()
    r = await c.post(url + "/v1/chat/completions", json=CHAT)
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


async def _one_stream(c: httpx.AsyncClient, url: str) -> tuple[float, float]:
    t = time.perf_counter()
    first = 0.0
    async with c.stream("POST", url + "/v1/chat/completions", json=STREAM) as r:
        async for _ in r.aiter_raw():
            if not first:
                first = (time.perf_counter() - t) * 1000
    return first, (time.perf_counter() - t) * 1000


async def latency(backend: str, proxy: str, n: int, n_stream: int) -> dict[str, list[float]]:
    """Alternate direct and proxied requests; return per-kind latency samples (ms)."""
    out: dict[str, list[float]] = {
        k: [] for k in ("d", "p", "d_ttfb", "p_ttfb", "d_ttlb", "p_ttlb")
    }
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(50):  # warm-up
            await _one(c, backend)
            await _one(c, proxy)
        for _ in range(n):
            out["d"].append(await _one(c, backend))
            out["p"].append(await _one(c, proxy))
        for _ in range(n_stream):
            a, b = await _one_stream(c, backend)
            out["d_ttfb"].append(a)
            out["d_ttlb"].append(b)
            a, b = await _one_stream(c, proxy)
            out["p_ttfb"].append(a)
            out["p_ttlb"].append(b)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def queued_memory(
    backend: str, proxy: str, pid: int, clients: int = 500
) -> tuple[float, float]:
    """RSS of joulegate idle and with ``clients`` requests waiting in its queue."""
    idle = rss_mb(pid)
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        tasks = [
            asyncio.create_task(
                c.post(proxy + "/v1/chat/completions", json=CHAT, headers={"x-fake-hold": "1"})
            )
            for _ in range(clients)
        ]
        for _ in range(600):
            h = (await c.get(proxy + "/healthz")).json()
            if h["waiting"] >= clients - 1:
                break
            await asyncio.sleep(0.1)
        loaded = rss_mb(pid)
        await c.post(backend + "/fake/release")
        for _ in range(clients):
            await c.post(backend + "/fake/release")
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, return_exceptions=True)
    return idle, loaded


def _pid_listening(port: str) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"bench.serve .* {port} "], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(out[0])


async def main(n: int = 2000, n_stream: int = 300) -> None:
    """Print the overhead table for the gate-only proxy and for the full pipeline."""
    rows = []
    with process("fake") as backend:
        for kind in ("gate", "full"):
            with process(kind, backend) as proxy:
                s = await latency(backend, proxy, n, n_stream)
                pid = _pid_listening(proxy.rsplit(":", 1)[1])
                idle, loaded = await queued_memory(backend, proxy, pid)
                rows.append((kind, s, idle, loaded))
    print("\n### Proxy overhead (ms; fake backend, client and joulegate share 2 cores)\n")
    print(
        "| pipeline | metric | direct p50 | via joulegate p50 | added p50 | direct p99 "
        "| via joulegate p99 | added p99 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, s, _, _ in rows:
        for label, d, p in (
            ("non-streaming", "d", "p"),
            ("stream TTFB", "d_ttfb", "p_ttfb"),
            ("stream last byte (20 chunks)", "d_ttlb", "p_ttlb"),
        ):
            d50, p50 = statistics.median(s[d]), statistics.median(s[p])
            d99, p99 = pct(s[d], 99), pct(s[p], 99)
            print(
                f"| {kind} | {label} | {d50:.2f} | {p50:.2f} | {p50 - d50:.2f} | {d99:.2f} "
                f"| {p99:.2f} | {p99 - d99:.2f} |"
            )
    print("\n### Memory (resident, MB)\n")
    print("| pipeline | idle | 500 clients queued |")
    print("|---|---|---|")
    for kind, _, idle, loaded in rows:
        print(f"| {kind} | {idle:.1f} | {loaded:.1f} |")
