"""joulegate's HTTP protocol writes a whole answer's head together with its body, and
a stream's head at once; keep-alive connections carry answer after answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.serving import serve


class WaitingApp:
    """Starts each answer, then sends its body only when the test says :meth:`go`
    (``/stream``: chunked, ``/nobody``: a 204, ``/parts``: a body of known length in
    two pieces, each on its own ``go``, anything else: one piece of known length)."""

    def __init__(self) -> None:
        self._go = asyncio.Event()

    def go(self) -> None:
        """Let the answer in progress send its next piece."""
        self._go.set()

    async def _wait(self) -> None:
        await self._go.wait()
        self._go.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        body = path.encode() * 3
        headers = [(b"content-type", b"text/plain")]
        if path == "/nobody":
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await self._wait()
            await send({"type": "http.response.body", "body": b""})
            return
        if path != "/stream":
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._wait()
        if path == "/parts":
            await send({"type": "http.response.body", "body": body[:3], "more_body": True})
            await self._wait()
            body = body[3:]
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def connected(
    app: WaitingApp,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to ``app``, served by joulegate's HTTP protocol in this loop."""
    async with serve(app, lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            yield reader, writer
        finally:
            writer.close()


async def _ask(writer: asyncio.StreamWriter, path: str, method: str = "GET") -> None:
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()


async def _read(reader: asyncio.StreamReader) -> bytes:
    """What has arrived (at least one byte); a read that waits long means nothing came."""
    return await asyncio.wait_for(reader.read(65536), 10)


@pytest.mark.parametrize("path", ["/whole", "/parts"])
async def test_a_whole_answers_head_comes_with_its_body(path: str) -> None:
    app = WaitingApp()
    async with connected(app) as (reader, writer):
        for _ in range(2):  # the second on the same keep-alive connection
            await _ask(writer, path)
            await asyncio.sleep(0.2)  # a head written at the start would be here by now
            app.go()
            # read() returns what is buffered without letting the app run: had the head
            # gone alone, this is all it would return.
            first = await _read(reader)
            assert first.startswith(b"HTTP/1.1 200 ")
            assert first.partition(b"\r\n\r\n")[2], "the head came alone"
            answer = first
            while not answer.endswith(path.encode() * 3):
                app.go()  # /parts: the second piece
                answer += await _read(reader)
            assert answer.partition(b"\r\n\r\n")[2] == path.encode() * 3


@pytest.mark.parametrize("path", ["/stream", "/nobody"])
async def test_a_streams_head_and_a_bodiless_answers_head_go_at_once(path: str) -> None:
    app = WaitingApp()
    async with connected(app) as (reader, writer):
        await _ask(writer, path)
        head = await _read(reader)  # held for the body, it would never come: no go yet
        status = b"204" if path == "/nobody" else b"200"
        assert head.startswith(b"HTTP/1.1 " + status) and head.endswith(b"\r\n\r\n")
        app.go()
        if path == "/stream":
            rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
            assert b"/stream" * 3 in rest


async def test_a_head_requests_head_goes_at_once() -> None:
    app = WaitingApp()
    async with connected(app) as (reader, writer):
        await _ask(writer, "/whole", method="HEAD")
        head = await _read(reader)  # uvicorn sends no body to a HEAD: nothing to wait for
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        app.go()
