"""Idle and slowloris connections against joulegate, from a process of their own.

As a tool (the test in ``tests/test_client_bounds.py`` uses it)::

    python -m bench.idle_clients hold HOST PORT IDLE SLOWLORIS

opens IDLE connections that send nothing and SLOWLORIS that send a request head one
byte a second, never finished, prints ``ready`` and holds them until its standard
input closes.

As a benchmark (``python -m bench idle_clients``): joulegate (``bench.serve full``)
in a process whose open-files limit is the common 1,024, 600 idle and 600 slowloris
connections open, then a normal client's request: its status and time, and how many
of the 1,200 joulegate still holds open (issue 31, defect 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx

from bench.serve import spawn_process

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def _hold(host: str, port: int, idle: int, slowloris: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # not the parent's lowered one
    writers = []
    for i in range(idle + slowloris):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            if i >= idle:
                writer.write(HEAD)  # a head begun, and never finished
            writers.append(writer)
    print("ready", flush=True)
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    while not stdin_closed.done():
        for w in writers[idle:]:
            if not w.is_closing():
                w.write(b"x")  # one byte of a header name a second
        await asyncio.sleep(1.0)
    for w in writers:
        w.close()


@contextlib.asynccontextmanager
async def holding(url: str, idle: int, slowloris: int = 0) -> AsyncIterator[None]:
    """``idle`` and ``slowloris`` connections to ``url``, held by a child process."""
    host, port = url.removeprefix("http://").split(":")
    args = ["-m", "bench.idle_clients", "hold", host, port, str(idle), str(slowloris)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the idle clients did not start: {line!r}")
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _open_sockets(pid: int) -> int:
    return sum(
        1
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    )


async def main() -> None:
    """Print what a normal client gets while 1,200 idle/slowloris connections are open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the children's
    try:
        with (
            spawn_process(["bench.serve", "fake", "PORT"], {}) as (backend, _),
            spawn_process(["bench.serve", "full", "PORT", backend], {}) as (url, pid),
        ):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            async with holding(url, 600, 600):
                await asyncio.sleep(2.0)
                held = _open_sockets(pid)
                began = time.monotonic()
                try:
                    async with httpx.AsyncClient(timeout=30) as c:
                        r = await c.post(
                            url + "/v1/chat/completions",
                            json={"model": "m", "messages": [], "max_tokens": 3},
                        )
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                took_s = time.monotonic() - began
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("| idle + slowloris connections | joulegate sockets open | normal request | took |")
    print("| --- | --- | --- | --- |")
    print(f"| 600 + 600 | {held} | {outcome} | {took_s:.2f} s |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        h, p, idle, slow = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        asyncio.run(_hold(h, p, idle, slow))
    else:
        asyncio.run(main())
