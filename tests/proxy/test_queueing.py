"""The gate behind the proxy: order, bounds, disconnects, and no leaked slots."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Running
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def post(c: httpx.AsyncClient, jg: Running, i: int, **headers: str) -> httpx.Response:
    return await c.post(
        jg.url + "/v1/chat/completions", json={**CHAT, "user": f"u{i}"}, headers=headers
    )


async def test_fifty_clients_are_served_one_at_a_time_in_arrival_order(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    limits = httpx.Limits(max_connections=100)
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient(limits=limits, timeout=60) as c:
        first = asyncio.create_task(post(c, jg, 0, **{"x-fake-hold": "1"}))
        await until(lambda: jg.gate.in_flight == 1)
        tasks = [first]
        sent_s, queued_by_s = [0.0], [0.0]
        for i in range(1, 50):
            sent_s.append(time.monotonic())
            tasks.append(asyncio.create_task(post(c, jg, i, **{"x-fake-delay-ms": "2"})))
            await until(lambda i=i: jg.gate.waiting == i)  # type: ignore[misc]
            queued_by_s.append(time.monotonic())  # request i is in the queue by now
        released_s = time.monotonic()
        fake.release()
        responses = await asyncio.gather(*tasks)
        done_s = time.monotonic()
    assert all(r.status_code == 200 for r in responses)
    assert [s.json()["user"] for s in fake.seen] == [f"u{i}" for i in range(50)]
    assert fake.max_in_flight == 1
    queued_ms = [float(r.headers["x-queue-ms"]) for r in responses]
    assert queued_ms[0] < 50  # the first was admitted at once
    for i in range(1, 50):  # x-queue-ms is each one's own wait, to the 0.1 ms it shows
        assert queued_ms[i] >= (released_s - queued_by_s[i]) * 1000 - 0.1  # held till then
        assert queued_ms[i] <= (done_s - sent_s[i]) * 1000 + 0.1  # and not longer than it lived


async def test_never_more_than_max_concurrency_reach_the_backend(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url, max_concurrency=3) as jg, httpx.AsyncClient(timeout=60) as c:
        rs = await asyncio.gather(*(post(c, jg, i, **{"x-fake-delay-ms": "20"}) for i in range(30)))
        assert (jg.gate.in_flight, jg.gate.waiting) == (0, 0)
    assert all(r.status_code == 200 for r in rs)
    assert fake.max_in_flight == 3


async def test_full_queue_gets_503_with_retry_after(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url, max_queue=2) as jg, httpx.AsyncClient(timeout=60) as c:
        held = asyncio.create_task(post(c, jg, 0, **{"x-fake-hold": "1"}))
        await until(lambda: jg.gate.in_flight == 1)
        queued = [asyncio.create_task(post(c, jg, i)) for i in (1, 2)]
        await until(lambda: jg.gate.waiting == 2)
        refused = await post(c, jg, 3)
        fake.release()
        rest = await asyncio.gather(held, *queued)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "queue_full"
    assert [r.status_code for r in rest] == [200, 200, 200]
    assert "u3" not in [s.json()["user"] for s in fake.seen]


async def test_client_leaving_the_queue_never_reaches_the_backend(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient(timeout=60) as c:
        held = asyncio.create_task(post(c, jg, 0, **{"x-fake-hold": "1"}))
        await until(lambda: jg.gate.in_flight == 1)
        leaver = asyncio.create_task(post(c, jg, 1))
        await until(lambda: jg.gate.waiting == 1)
        stayer = asyncio.create_task(post(c, jg, 2))
        await until(lambda: jg.gate.waiting == 2)
        leaver.cancel()  # closes the connection
        await until(lambda: jg.gate.waiting == 1)
        assert not held.done()  # it left while the first request was still running
        fake.release()
        results = await asyncio.gather(held, stayer)
    assert [r.status_code for r in results] == [200, 200]
    assert [s.json()["user"] for s in fake.seen] == ["u0", "u2"]


async def test_client_leaving_mid_stream_cancels_the_backend_and_frees_the_slot(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    req = {**CHAT, "stream": True, "max_tokens": 50}
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient(timeout=60) as c:
        async with c.stream(
            "POST",
            jg.url + "/v1/chat/completions",
            json=req,
            headers={"x-fake-chunk-delay-ms": "100"},
        ) as r:
            await anext(r.aiter_raw())
            left_at = time.monotonic()
        # The backend had ~5 s of chunks left; the slot must come back long before that.
        await until(lambda: jg.gate.in_flight == 0, timeout_s=2.0)
        await until(lambda: fake.seen[0].finished_s is not None, timeout_s=2.0)
        assert fake.seen[0].cancelled
        assert fake.seen[0].finished_s is not None and fake.seen[0].finished_s - left_at < 2.0
        after = await post(c, jg, 1)
    assert after.status_code == 200


async def test_gate_is_empty_after_a_mix_of_disconnects_timeouts_and_errors(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    stream = {**CHAT, "stream": True, "max_tokens": 20}
    kinds = ["ok", "stream_leave", "queued_leave", "timeout", "error", "drop", "ok_stream"] * 6

    async def one(c: httpx.AsyncClient, jg: Running, i: int, kind: str) -> Any:
        url = jg.url + "/v1/chat/completions"
        if kind == "ok":
            return (await c.post(url, json=CHAT)).status_code
        if kind == "ok_stream":
            return (await c.post(url, json=stream)).status_code
        if kind == "timeout":
            return (await c.post(url, json=CHAT, headers={"x-fake-hang": "1"})).status_code
        if kind == "error":
            return (await c.post(url, json=CHAT, headers={"x-fake-status": "500"})).status_code
        if kind == "drop":
            r = await c.post(url, json=stream, headers={"x-fake-drop": "3"})
            return json.loads(r.content.split(b"data: ")[-1])["error"]["type"]
        if kind == "stream_leave":
            async with c.stream(
                "POST", url, json=stream, headers={"x-fake-chunk-delay-ms": "20"}
            ) as r:
                await anext(r.aiter_raw())
            return "left"
        task = asyncio.create_task(c.post(url, json=CHAT))
        await asyncio.sleep(0.01 * (i % 4))
        task.cancel()
        return "left"

    async with (
        joulegate_app(fake.url, read_timeout_s=0.3, max_concurrency=2) as jg,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c,
    ):
        results = await asyncio.gather(*(one(c, jg, i, k) for i, k in enumerate(kinds)))
        await until(lambda: (jg.gate.in_flight, jg.gate.waiting) == (0, 0))
        final = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    by_kind = dict(zip(kinds, results, strict=True))
    assert by_kind["ok"] == 200 and by_kind["ok_stream"] == 200
    assert by_kind["timeout"] == 504 and by_kind["error"] == 500
    assert by_kind["drop"] == "backend_unreachable"
    assert final.status_code == 200
    assert fake.in_flight == 0
