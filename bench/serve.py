"""Run the fake backend or joulegate in its own process, for the benchmarks.

python -m bench.serve fake PORT
python -m bench.serve bare PORT BACKEND_URL [POOL]  # bench.bare: the least a forwarder does
python -m bench.serve gate PORT BACKEND_URL      # proxy + gate, no stages
python -m bench.serve full PORT BACKEND_URL      # every default stage

All of them run under the same uvicorn settings; joulegate with its own HTTP protocol
(:func:`proxy.server.http_protocol`), as `joulegate serve` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

from bench.bare import BareForwarder
from bench.fake import FakeBackend
from config import Settings, load_settings
from proxy.app import create_app
from proxy.llamacpp import free_port
from proxy.server import http_protocol

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def spawn(*argv: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``python -m ARGV`` with ``PORT`` filled in, and ``env`` added to this
    process's environment; yield its URL once it answers."""
    with spawn_process(argv, env or {}) as (url, _):
        yield url


@contextlib.contextmanager
def spawn_process(
    argv: Sequence[str], env: Mapping[str, str], base: Mapping[str, str] = os.environ
) -> Iterator[tuple[str, int]]:
    """Run ``python -m ARGV`` in ``base`` plus ``env``, with ``PORT`` filled in (in the
    arguments and in ``env``'s values); yield its URL and pid once it answers."""
    port = str(free_port())
    args = [a.replace("PORT", port) for a in argv]
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**base, **{k: v.replace("PORT", port) for k, v in env.items()}},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            if proc.poll() is not None:
                raise RuntimeError(f"python -m {' '.join(args)} exited with {proc.returncode}")
            try:
                httpx.get(url + "/healthz", timeout=1)  # any answer, even a 404, will do
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # still busy draining (a proxy falling behind)
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def serve_here(
    app: Any,
    *,
    lifespan: Literal["auto", "on", "off"] = "on",
    max_header_bytes: int = 64 * 1024,
    port: int = 0,
    kill_on_exit: bool = False,
    settings: Settings | None = None,
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1, with the HTTP protocol ``joulegate
    serve`` uses; yield its base URL.

    ``port`` 0 picks a free port; a fixed one lets a test stop a server and start
    another where clients expect it. With ``kill_on_exit`` the server ends as a
    killed process does: it stops listening and every open connection is reset at
    once, answered or not, instead of being let finish. ``settings`` (the app's) give
    the protocol its bounds, as ``joulegate serve`` does; without them only
    ``max_header_bytes`` is set."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http=http_protocol(settings or Settings(max_header_bytes=max_header_bytes)),
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        if kill_on_exit:
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                connection.transport.abort()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def main(argv: list[str]) -> None:
    """Serve until terminated; joulegate's ledger folder goes with it."""
    with contextlib.ExitStack() as stack:
        _serve(argv, stack)


def _serve(argv: list[str], stack: contextlib.ExitStack) -> None:
    kind, port = argv[0], int(argv[1])
    app: Any
    http: Any = "httptools"  # uvicorn's own, for the fake backend and the bare forwarder
    if kind == "fake":
        app = FakeBackend()
    elif kind == "bare":
        app = BareForwarder(argv[2], *(int(x) for x in argv[3:4]))
    else:
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="joulegate-bench-"))
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("JOULEGATE_")},
            "JOULEGATE_BACKEND_URL": argv[2],
            "JOULEGATE_LEDGER_PATH": os.path.join(data, "ledger.sqlite3"),
            "JOULEGATE_LOG_LEVEL": "warning",
        }
        settings = load_settings(env=env)
        # As `joulegate serve` runs it: its protocol, its start-up heap frozen.
        app = create_app(
            settings, components=[] if kind == "gate" else None, freeze_startup_heap=True
        )
        http = http_protocol(settings)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="on" if kind != "fake" else "off",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
