"""Calling joulegate's own routes in-process, as the console's playground does.

A prompt from the Playground is not a second kind of request: it is an ordinary
``POST /v1/chat/completions`` (or ``/v1/energy/forecast``) handed to joulegate's own
ASGI app, authenticated by a one-use ticket (:mod:`proxy.console.sessions`), so it is
gated, metered, priced, budgeted and recorded exactly like a client's. The answer's
messages come back through a queue the console reads at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar.types import ASGIApp

USER_AGENT = b"joulegate-console"


@dataclass(slots=True)
class Call:
    """One in-process request: its answer's messages as they come."""

    messages: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    left: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the console's own client has gone: the request sees a disconnect."""
    task: asyncio.Task[None] | None = None


def scope_for(
    path: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    *,
    method: str = "POST",
    query: str = "",
) -> dict[str, Any]:
    """An HTTP scope for ``method path?query`` from ``client`` with ``headers``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"user-agent", USER_AGENT), *headers],
        "client": client,
        "server": None,
        "state": {},
    }


@contextlib.asynccontextmanager
async def calling(app: ASGIApp, scope: dict[str, Any], body: bytes) -> AsyncIterator[Call]:
    """Run ``app`` on ``scope`` with ``body``; yields the :class:`Call` whose queue
    gets the answer. Leaving early tells the app its client disconnected."""
    call = Call()
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await call.left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        await call.messages.put(message)

    call.task = asyncio.create_task(app(scope, receive, send), name="console-call")  # type: ignore[arg-type]
    try:
        yield call
    finally:
        call.left.set()
        try:
            await asyncio.wait_for(asyncio.shield(call.task), timeout=10.0)
        except TimeoutError:
            call.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call.task


async def whole(app: ASGIApp, scope: dict[str, Any], body: bytes) -> tuple[int, Any]:
    """Call ``app`` and read its whole JSON answer: (status, parsed body)."""
    status, chunks = 500, []
    async with calling(app, scope, body) as call:
        while True:
            message = await call.messages.get()
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    raw = b"".join(chunks)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, {"error": {"message": raw[:500].decode("utf-8", "replace")}}


def headers_of(message: Any) -> dict[str, str]:
    """An ``http.response.start`` message's headers, names lower-cased."""
    return {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
        for k, v in message.get("headers", ())
    }
