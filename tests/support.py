"""Serve ASGI apps on loopback inside the test's own event loop, and read SSE bodies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from litestar import Litestar

from config import Settings
from proxy.gate import Gate
from proxy.server import http_protocol


@contextlib.asynccontextmanager
async def serve(
    app: Any,
    *,
    lifespan: Literal["auto", "on", "off"] = "on",
    max_header_bytes: int = 64 * 1024,
    port: int = 0,
    kill_on_exit: bool = False,
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1, with the HTTP protocol ``joulegate
    serve`` uses; yield its base URL.

    ``port`` 0 picks a free port; a fixed one lets a test stop a server and start
    another where clients expect it. With ``kill_on_exit`` the server ends as a
    killed process does: it stops listening and every open connection is reset at
    once, answered or not, instead of being let finish."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http=http_protocol(Settings(max_header_bytes=max_header_bytes)),
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


@dataclass
class Running:
    """joulegate under test: its URL, app and gate."""

    url: str
    app: Litestar

    @property
    def gate(self) -> Gate:
        """The live gate (for checking it is empty)."""
        return self.app.state.ctx.gate  # type: ignore[no-any-return]


def sse_events(raw: bytes) -> list[Any]:
    """The data of every event in an SSE body: parsed JSON, or ``"[DONE]"``."""
    out: list[Any] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def read_body(receive: Any) -> bytes:
    """The whole request body, for the raw-ASGI fakes."""
    body = b""
    while True:
        msg = await receive()
        chunk: bytes = msg.get("body", b"")
        body += chunk
        if not msg.get("more_body"):
            return body


JoulegateApp = Callable[..., contextlib.AbstractAsyncContextManager[Running]]
"""The ``joulegate_app`` fixture: ``joulegate_app(backend_url, components, **settings)``."""
