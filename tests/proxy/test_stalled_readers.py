"""A client that stops reading its stream, and keeps its socket open, holds nothing of
joulegate once its answer is dropped (issue 31, defect 3): not the unsent bytes, not
the connection."""

from __future__ import annotations

import select
import socket

import pytest

from proxy import heap
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp, serve
from tests.support.stages import Capture, component
from tests.support.telemetry import until

BODY = b'{"model": "m", "stream": true, "max_tokens": 2000, "messages": []}'


def _hung_up(sock: socket.socket) -> bool:
    """joulegate closed or reset this connection (the client has not read a byte)."""
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLHUP | select.POLLRDHUP)
    return any(events & ~select.POLLIN for _, events in poller.poll(0))


async def test_a_dropped_stalled_reader_loses_its_connection_and_unsent_bytes(
    joulegate_app: JoulegateApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 1

    monkeypatch.setattr(heap, "_TRIM", trim)
    monkeypatch.setattr(heap, "TRIM_DELAY_S", 0.01)
    cap = Capture()
    fake = FakeBackend(words=("x" * 65536,))  # 64 KiB per chunk: buffers fill at once
    async with (
        serve(fake, lifespan="off") as url,
        joulegate_app(url, [component(cap)], write_timeout_s=0.5) as jg,
    ):
        host, port = jg.url.removeprefix("http://").split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
        )  # and never reads a byte, nor closes
        try:
            await until(lambda: len(cap.seen) == 1, timeout_s=30)
            assert cap.seen[0].failure == "client_stalled"
            # The connection is reset: joulegate no longer holds the answer's unsent
            # bytes (hundreds of KiB a stream) for a client that may never read them.
            await until(lambda: _hung_up(stalled), timeout_s=30)
            # And what it held is handed back to the system (glibc keeps freed pages).
            await until(lambda: trims == [0], timeout_s=30)
        finally:
            stalled.close()
