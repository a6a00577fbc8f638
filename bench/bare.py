"""The least a proxy can do: a raw-ASGI forwarder over one shared aiohttp session.

The overhead benchmark serves it beside joulegate, with the same uvicorn settings,
so that joulegate's added latency can be read against the floor any Python
forwarder on this stack pays: read the body, send it on, relay status, headers and
body, a stream chunk by chunk as it arrives. No gate, no parsing, no error mapping.
"""

from __future__ import annotations

from typing import Any

import aiohttp

_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade"})
# Request: hop-by-hop headers and those aiohttp computes itself. Response: those
# uvicorn sets itself (the body's length is kept: the client needs it).
_DROP_REQUEST = _HOP | {b"host", b"content-length"}
_DROP_RESPONSE = _HOP | {b"date", b"server"}


class BareForwarder:
    """ASGI app forwarding every request to ``backend_url``."""

    def __init__(self, backend_url: str, pool: int = 100) -> None:
        self.backend_url = backend_url.rstrip("/")
        self.pool = pool
        """Backend connections at most (aiohttp's default 100); 0: unlimited."""
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point: the session lives from start-up to shutdown."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self.pool),
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Content-Type"),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._session is None:
            raise RuntimeError("BareForwarder served without its lifespan")
        parts: list[bytes] = []
        more = True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        url = self.backend_url + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        async with self._session.request(
            scope["method"], url, data=b"".join(parts), headers=headers
        ) as r:
            out = [(k, v) for k, v in r.raw_headers if k.lower() not in _DROP_RESPONSE]
            await send({"type": "http.response.start", "status": r.status, "headers": out})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
