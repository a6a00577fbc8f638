"""Serve ASGI apps on loopback inside the test's own event loop, and read SSE bodies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Litestar

from bench.serve import serve_here
from proxy.gate import Gate

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
"""The smallest chat request the fake backend answers."""

serve = serve_here
"""Serve an ASGI app on loopback in this loop (:func:`bench.serve.serve_here`)."""


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
