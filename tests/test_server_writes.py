"""joulegate's HTTP protocol writes a whole answer's head together with its body, and
a stream's head at once; keep-alive connections carry answer after answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import serve

PAUSE_S = 0.3
"""How long the app waits between an answer's head and its body."""


class PausingApp:
    """Starts each answer, waits ``PAUSE_S``, then sends its body (``/stream``: chunked,
    ``/nobody``: a 204, anything else: of known length)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        body = path.encode() * 3
        headers = [(b"content-type", b"text/plain")]
        if path == "/nobody":
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await asyncio.sleep(PAUSE_S)
            await send({"type": "http.response.body", "body": b""})
            return
        if path != "/stream":
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(PAUSE_S)
        if path == "/parts":  # a body of known length sent in two pieces
            await send({"type": "http.response.body", "body": body[:3], "more_body": True})
            await asyncio.sleep(PAUSE_S)
            body = body[3:]
        await send({"type": "http.response.body", "body": body})


async def _first_bytes(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """What the first read returns, and how long it took."""
    loop = asyncio.get_running_loop()
    t = loop.time()
    data = await asyncio.wait_for(reader.read(65536), 10)
    return data, loop.time() - t


async def _ask(writer: asyncio.StreamWriter, path: str, method: str = "GET") -> None:
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()


async def _read_answer(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """The rest of an answer of known length whose first bytes were ``first``."""
    head, _, body = first.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))  # fmt: skip
    while len(body) < length:
        body += await asyncio.wait_for(reader.read(65536), 10)
    return body


@pytest.mark.parametrize("path", ["/whole", "/parts"])
async def test_a_whole_answers_head_comes_with_its_body(path: str) -> None:
    async with serve(PausingApp(), lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(2):  # the second on the same keep-alive connection
                await _ask(writer, path)
                first, waited_s = await _first_bytes(reader)
                assert first.startswith(b"HTTP/1.1 200 ")
                # The head was held until the body's first piece, and went with it.
                assert waited_s >= PAUSE_S * 0.8
                body = first.partition(b"\r\n\r\n")[2]
                assert body, "the head came alone"
                assert await _read_answer(reader, first) == path.encode() * 3
        finally:
            writer.close()


@pytest.mark.parametrize("path", ["/stream", "/nobody"])
async def test_a_streams_head_and_a_bodiless_answers_head_go_at_once(path: str) -> None:
    async with serve(PausingApp(), lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await _ask(writer, path)
            first, waited_s = await _first_bytes(reader)
            status = b"204" if path == "/nobody" else b"200"
            assert first.startswith(b"HTTP/1.1 " + status)
            assert waited_s < PAUSE_S * 0.8, "the head waited for the body"
            assert first.endswith(b"\r\n\r\n")  # the head alone: the body is not there yet
            if path == "/stream":
                rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
                assert b"/stream" * 3 in rest
        finally:
            writer.close()


async def test_a_head_requests_head_goes_at_once() -> None:
    async with serve(PausingApp(), lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await _ask(writer, "/whole", method="HEAD")
            first, waited_s = await _first_bytes(reader)
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\n")
            assert waited_s < PAUSE_S * 0.8
        finally:
            writer.close()
