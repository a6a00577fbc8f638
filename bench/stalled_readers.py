"""Stalled readers: does joulegate give back the memory of streams nobody reads?

``python -m bench stalled_readers`` (issue 31, defect 3): a fresh ``python -m
proxy.cli serve`` (64 slots, ``write_timeout_s`` 2 s) in front of the bench fake
backend; each round opens 64 raw sockets that each ask for a long streamed answer
and never read a byte. joulegate drops each answer after ``write_timeout_s``
(``client_stalled``), then the clients close their sockets. joulegate's resident
memory (``VmRSS``) after each of 4 rounds: it should grow in the first round (the
allocator's arenas) and stay flat after it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time

import aiohttp

from bench.memory import joulegate_env, status_mb
from bench.serve import spawn, spawn_process

STREAMS = 64
ROUNDS = 4
WRITE_TIMEOUT_S = 2.0
BODY = b'{"model": "m", "stream": true, "max_tokens": 100000, "messages": []}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"x-fake-word-bytes: 4096\r\n"  # 400 MB of answer, 4 KiB an event
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


def stalled_client(host: str, port: int, request: bytes = REQUEST) -> socket.socket:
    """A socket that has asked for a long stream and will never read it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    s.sendall(request)
    return s


async def requests_done(c: aiohttp.ClientSession, url: str) -> int:
    """Requests joulegate has finished (``joulegate_requests_total``, every status)."""
    async with c.get(url + "/metrics") as r:
        text = await r.text()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("joulegate_requests_total{")
    )


async def one_round(url: str, streams: int = STREAMS, request: bytes = REQUEST) -> float:
    """``streams`` stalled readers, dropped by joulegate, then closed; seconds taken."""
    host, port = url.removeprefix("http://").split(":")
    began = time.monotonic()
    async with aiohttp.ClientSession() as c:
        before = await requests_done(c, url)
        socks = [stalled_client(host, int(port), request) for _ in range(streams)]
        try:
            # Every stream dropped (client_stalled) while its client is still there.
            while (done := await requests_done(c, url) - before) < streams:
                if time.monotonic() - began > 300:
                    raise RuntimeError(f"only {done} of {streams} stalled streams dropped")
                await asyncio.sleep(0.2)
        finally:
            for s in socks:
                s.close()
    await asyncio.sleep(1.0)  # the closes reach joulegate
    return time.monotonic() - began


async def main() -> None:
    """Print joulegate's resident memory before and after each round."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOULEGATE_", "OTEL_"))}
    rows: list[tuple[str, float]] = []
    with (
        spawn("bench.serve", "fake", "PORT") as backend,
        tempfile.TemporaryDirectory(prefix="joulegate-bench-") as folder,
    ):
        env = {
            **joulegate_env(backend, folder),
            "JOULEGATE_MAX_CONCURRENCY": str(STREAMS),
            "JOULEGATE_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
        }
        with spawn_process(["proxy.cli", "serve"], env, base) as (url, pid):
            await asyncio.sleep(1.0)
            rows.append(("started", status_mb(pid, "VmRSS")))
            for n in range(1, ROUNDS + 1):
                took_s = await one_round(url)
                rows.append((f"after round {n}", status_mb(pid, "VmRSS")))
                print(f"  stalled_readers: round {n} took {took_s:.1f} s", file=sys.stderr)
    print(f"\n### {STREAMS} stalled readers a round (write_timeout_s {WRITE_TIMEOUT_S:g})\n")
    print("| when | joulegate RSS MB | since round 1 MB |")
    print("|---|---|---|")
    first = rows[1][1]
    for when, rss in rows:
        since = f"{rss - first:+.0f}" if when not in ("started", "after round 1") else "-"
        print(f"| {when} | {rss:.0f} | {since} |")


if __name__ == "__main__":
    asyncio.run(main())
