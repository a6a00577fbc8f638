"""What one client can hold of joulegate: connections, time before a request head,
pauses in a body, the head's size however it is read, and a backend's 100-continue
(issue 31, defects 4, 6 and 7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import AsyncIterator, Iterator

import httpx

from bench.idle_clients import holding
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp, serve

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@contextlib.asynccontextmanager
async def backend(fake: FakeBackend) -> AsyncIterator[str]:
    async with serve(fake, lifespan="off") as url:
        yield url


@contextlib.contextmanager
def open_files_limit(spare: int) -> Iterator[None]:
    """This process may open only ``spare`` more files meanwhile (joulegate runs here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_idle_and_slowloris_connections_cannot_lock_a_normal_client_out(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with backend(fake) as url, joulegate_app(url, max_client_connections=40) as jg:
        # 500 connections against a process with room for 250 more files: without a cap
        # joulegate runs out of descriptors and accepts no one any more. (asyncio accepts
        # up to 100 waiting connections before any of them is handled, and so closed to
        # make room: the room left must hold such a burst beside the cap.)
        with open_files_limit(250):
            async with holding(jg.url, 250, 250), httpx.AsyncClient(timeout=5) as c:
                answer = await c.post(jg.url + "/v1/chat/completions", json=CHAT)  # within 5 s
    assert answer.status_code == 200


async def test_a_head_that_never_ends_is_closed_after_head_timeout_s(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with backend(fake) as url, joulegate_app(url, head_timeout_s=0.3) as jg:
        host, port = jg.url.removeprefix("http://").split(":")
        silent_r, silent_w = await asyncio.open_connection(host, int(port))
        slow_r, slow_w = await asyncio.open_connection(host, int(port))
        slow_w.write(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")  # and never the end
        silent = await asyncio.wait_for(silent_r.read(), 10)  # read() ends: joulegate closed
        slow = await asyncio.wait_for(slow_r.read(), 10)
        for w in (silent_w, slow_w):
            w.close()
        async with httpx.AsyncClient() as c:
            after = await c.get(jg.url + "/v1/models")  # a prompt client is unaffected
    assert silent.startswith(b"HTTP/1.1 408 ") and slow.startswith(b"HTTP/1.1 408 ")
    assert json.loads(slow.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert after.status_code == 200 and fake.seen[-1].path == "/v1/models"


async def test_a_body_that_stops_coming_is_dropped_and_never_forwarded(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with backend(fake) as url, joulegate_app(url, body_timeout_s=0.3) as jg:
        host, port = jg.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b'{"model": "m", "messages": ['
        )  # 29 of 1,000 bytes, then nothing
        gone = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert b" 200 " not in gone.split(b"\r\n", 1)[0]
    assert fake.seen == [] and jg.gate.in_flight == 0


async def test_a_head_over_the_limit_is_431_even_when_it_arrives_in_one_read(
    joulegate_app: JoulegateApp,
) -> None:
    fake = FakeBackend()
    async with backend(fake) as url, joulegate_app(url) as jg:
        host, port = jg.url.removeprefix("http://").split(":")
        body = json.dumps(CHAT).encode()
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(120))  # 120 KB
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)  # one write: the head and body in one read, or a few
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert fake.seen == []  # never forwarded


async def test_expect_100_continue_is_answered_even_by_a_backend_that_never_sends_100(
    joulegate_app: JoulegateApp,
) -> None:
    async def never_100(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A backend that reads the head, then waits for the body (it sends no 100)."""
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        await reader.readexactly(length)
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        answer = json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]})
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d"
                     b"\r\n\r\n%s" % (len(answer), answer.encode()))  # fmt: skip
        await writer.drain()
        writer.close()

    seen: list[bytes] = []
    server = await asyncio.start_server(never_100, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            joulegate_app(f"http://127.0.0.1:{port}", read_timeout_s=600) as jg,
            httpx.AsyncClient(timeout=5) as c,  # answered within 5 s, not read_timeout_s
        ):
            r = await c.post(
                jg.url + "/v1/chat/completions", json=CHAT, headers={"expect": "100-continue"}
            )
    finally:
        server.close()
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
    assert b"expect" not in seen[-1].lower()
