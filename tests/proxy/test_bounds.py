"""Bounded resources: backend connections, stalled readers, queued bodies, request
heads and huge answers can neither starve the gate nor take unbounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp, serve

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@contextlib.asynccontextmanager
async def backend(fake: FakeBackend) -> AsyncIterator[str]:
    async with serve(fake, lifespan="off") as url:
        yield url


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_clients_that_leave_free_their_backend_connections_and_gated_never_wait(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with (
        backend(fake) as url,
        joulegate_app(url, max_connections=4, pool_timeout_s=0.3) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        slow = {"x-fake-hang": "1"}
        # 8 clients ask an ungated path the backend never answers, and give up.
        leavers = [
            asyncio.create_task(c.get("/v1/files", headers=slow, timeout=0.3)) for _ in range(8)
        ]
        await asyncio.gather(*leavers, return_exceptions=True)
        await _until(lambda: len(fake.seen) >= 4 and fake.in_flight == 0)
        # Their connections are closed, so the backend saw each one cancelled.
        assert all(s.cancelled for s in fake.seen)
        assert (await c.get("/v1/models")).status_code == 200  # the pool is free again
        # Now 6 stay connected on the ungated path: they hold all 4 connections.
        stayers = [asyncio.create_task(c.get("/v1/files", headers=slow)) for _ in range(6)]
        await _until(lambda: fake.in_flight >= 4)
        chat = await c.post("/v1/chat/completions", json=CHAT)
        starved = await c.get("/v1/models")
        for t in stayers:
            t.cancel()
        await asyncio.gather(*stayers, return_exceptions=True)
    assert chat.status_code == 200  # gated requests have connections of their own
    assert starved.status_code == 504  # a bounded wait for a connection, not forever
    assert starved.json()["error"]["code"] == "backend_timeout"
    assert "connection" in starved.json()["error"]["message"]


async def test_a_reader_that_stops_reading_loses_its_stream_and_frees_the_slot(
    joulegate_app: JoulegateApp,
) -> None:
    from tests.support.stages import Capture, component

    cap = Capture()
    fake = FakeBackend(words=("x" * 65536,))  # 64 KiB per chunk: buffers fill at once
    async with (
        backend(fake) as url,
        joulegate_app(url, [component(cap)], write_timeout_s=0.5) as jg,
    ):
        host, port = jg.url.removeprefix("http://").split(":")
        body = b'{"model": "m", "stream": true, "max_tokens": 2000, "messages": []}'
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # and never reads a byte
        try:
            await _until(lambda: len(cap.seen) == 1)
            async with httpx.AsyncClient(timeout=30) as c:
                after = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        finally:
            stalled.close()
    assert cap.seen[0].failure == "client_stalled"
    # The backend request was dropped: nothing keeps generating for nobody.
    assert fake.in_flight == 0 and fake.seen[0].finished_s is not None
    assert after.status_code == 200
    assert jg.gate.in_flight == 0


async def test_queued_bodies_are_bounded_in_bytes(joulegate_app: JoulegateApp) -> None:
    fake = FakeBackend()
    mib = 1024 * 1024
    settings = {"max_body_bytes": mib, "max_queued_bytes": 3 * mib}
    big = {**CHAT, "messages": [{"role": "user", "content": "y" * (mib - 1000)}]}
    async with (
        backend(fake) as url,
        joulegate_app(url, **settings) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        holder = asyncio.create_task(
            c.post("/v1/chat/completions", json=CHAT, headers={"x-fake-hold": "1"})
        )
        await _until(lambda: fake.in_flight == 1)
        queued = [asyncio.create_task(c.post("/v1/chat/completions", json=big)) for _ in range(5)]
        await _until(lambda: jg.gate.waiting + sum(t.done() for t in queued) == 5)
        fake.release()
        answers = [await t for t in queued]
        await holder
        # Everything let go: the same number queue again afterwards.
        fake._released = None
        holder = asyncio.create_task(
            c.post("/v1/chat/completions", json=CHAT, headers={"x-fake-hold": "1"})
        )
        await _until(lambda: fake.in_flight == 1)
        again = [asyncio.create_task(c.post("/v1/chat/completions", json=big)) for _ in range(5)]
        await _until(lambda: jg.gate.waiting + sum(t.done() for t in again) == 5)
        fake.release()
        answers_again = [await t for t in again]
        await holder
    statuses = sorted(r.status_code for r in answers)
    # Each queued body counts twice (raw bytes and its parsed copy): at most one of
    # these ~1 MiB bodies fits in 3 MiB beside the holder's; the rest are refused.
    assert statuses == [200, 503, 503, 503, 503]
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.json()["error"]["code"] == "queue_full"
    assert sorted(r.status_code for r in answers_again) == statuses


@pytest.mark.parametrize("head_kib", [65, 1024])
async def test_an_oversized_request_head_is_431_and_the_connection_closed(
    joulegate_app: JoulegateApp, head_kib: int
) -> None:
    fake = FakeBackend()
    async with backend(fake) as url, joulegate_app(url) as jg:
        host, port = jg.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(head_kib):  # a header that keeps growing, never finished
                writer.write(b"a" * 1024)
                await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 10)  # until joulegate closes
        except ConnectionResetError:  # it closed while we were still sending: also a "no"
            answer = b"HTTP/1.1 431 (reset) " + b'"type": "invalid_request_error"'
            assert head_kib > 65
        writer.close()
        async with httpx.AsyncClient() as c:
            ok = await c.get(jg.url + "/v1/models", headers={"x-small": "a" * 60_000})
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"type": "invalid_request_error"' in answer
    assert fake.seen == [] or [s.path for s in fake.seen] == ["/v1/models"]
    assert ok.status_code == 200  # a head under the limit is fine


async def test_a_huge_answer_is_relayed_unparsed_with_energy_in_headers(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with (
        backend(fake) as url,
        joulegate_app(url, max_parsed_answer_bytes=1024) as jg,
        httpx.AsyncClient() as c,
    ):
        small = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        huge = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 500})
    assert "energy" in small.json()
    body = huge.json()
    assert "energy" not in body  # byte for byte the backend's answer
    assert len(body["choices"][0]["message"]["content"]) > 1024
    assert float(huge.headers["x-duration-ms"]) > 0
