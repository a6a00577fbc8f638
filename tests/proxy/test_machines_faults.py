"""Machines going down, cooling down and running hot, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

import httpx

from tests.support.fake_backend import FakeBackend
from tests.support.ledger import db_rows
from tests.support.machines import FakeWallMeter, LoopbackMachine, chat, gateway, slow
from tests.support.serving import serve
from tests.support.telemetry import until


async def test_a_machine_taken_down_mid_run_loses_no_request_and_no_row(tmp_path: Path) -> None:
    a = LoopbackMachine("a", FakeBackend(models=("m",)), FakeWallMeter(100.0))
    b = LoopbackMachine("b", FakeBackend(models=("m",)), FakeWallMeter(200.0))
    answers: list[httpx.Response] = []
    async with contextlib.AsyncExitStack() as stack:
        for m in (a, b):
            m.meter_url = await stack.enter_async_context(serve(m.meter, lifespan="off"))
        b.backend_url = await stack.enter_async_context(serve(b.backend, lifespan="off"))
        a_server = serve(a.backend, lifespan="off", kill_on_exit=True)
        a.backend_url = await a_server.__aenter__()
        try:
            jg = await stack.enter_async_context(gateway([a, b], tmp_path / "l.db"))
            c = await stack.enter_async_context(httpx.AsyncClient(base_url=jg.url, timeout=30))

            async def client() -> None:
                for _ in range(6):
                    r = await c.post("/v1/chat/completions", json=chat("m"), headers=slow(30))
                    answers.append(r)

            clients = [asyncio.create_task(client()) for _ in range(3)]
            await until(lambda: len(answers) >= 4)
        finally:
            await a_server.__aexit__(None, None, None)  # machine a goes down mid-run
        await asyncio.gather(*clients)
        ready = (await c.get("/readyz")).json()
    assert [r.status_code for r in answers] == [200] * 18
    after = [r.headers["x-joulegate-machine"] for r in answers[6:]]
    assert after.count("b") >= len(after) - 3  # at most the requests a had in hand
    rows = db_rows(tmp_path / "l.db", "model_requested IS NOT NULL")
    assert sorted(r["request_id"] for r in rows) == sorted(
        r.headers["x-request-id"] for r in answers
    )
    assert all(r["failure"] is None and r["machine"] in ("a", "b") for r in rows)
    machines = {ch["machine"]: ch["ok"] for ch in ready["checks"] if ch["name"] == "machine"}
    assert machines == {"a": False, "b": True}


async def test_a_model_whose_machines_are_all_down_is_502(tmp_path: Path) -> None:
    a = LoopbackMachine("a", FakeBackend(models=("m",)), FakeWallMeter(100.0))
    b = LoopbackMachine("b", FakeBackend(models=("n",)), FakeWallMeter(100.0))
    async with contextlib.AsyncExitStack() as stack:
        for m in (a, b):
            m.meter_url = await stack.enter_async_context(serve(m.meter, lifespan="off"))
        b.backend_url = await stack.enter_async_context(serve(b.backend, lifespan="off"))
        async with serve(a.backend, lifespan="off", kill_on_exit=True) as url:
            a.backend_url = url
            jg = await stack.enter_async_context(gateway([a, b], tmp_path / "l.db"))
            c = await stack.enter_async_context(httpx.AsyncClient(base_url=jg.url, timeout=30))
        first = await c.post("/v1/chat/completions", json=chat("m"))  # finds a down
        second = await c.post("/v1/chat/completions", json=chat("m"))  # known down
        other = await c.post("/v1/chat/completions", json=chat("n"))
        models = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
    for r in (first, second):
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "backend_unreachable"
    assert other.status_code == 200 and other.headers["x-joulegate-machine"] == "b"
    assert models == ["m", "n"]  # a down machine keeps its models listed


async def test_cool_down_pauses_its_own_machine_only(tmp_path: Path) -> None:
    a = LoopbackMachine("a", FakeBackend(models=("m",)), FakeWallMeter(100.0),
                        extra={"cooldown_s": 0.6, "cooldown_every": 2})  # fmt: skip
    b = LoopbackMachine("b", FakeBackend(models=("n",)), FakeWallMeter(100.0))
    async with contextlib.AsyncExitStack() as stack:
        for m in (a, b):
            m.meter_url = await stack.enter_async_context(serve(m.meter, lifespan="off"))
            m.backend_url = await stack.enter_async_context(serve(m.backend, lifespan="off"))
        jg = await stack.enter_async_context(gateway([a, b], tmp_path / "l.db"))
        c = await stack.enter_async_context(httpx.AsyncClient(base_url=jg.url, timeout=30))
        post = c.post
        waits = [(await post("/v1/chat/completions", json=chat("m"))).json()["energy"]
                 ["thermal_wait_ms"] for _ in range(2)]  # fmt: skip
        third = asyncio.create_task(post("/v1/chat/completions", json=chat("m")))
        other = await post("/v1/chat/completions", json=chat("n"))  # a cools meanwhile
        assert not third.done()
        cooled = (await third).json()["energy"]
        health = (await c.get("/healthz")).json()
    assert waits == [0.0, 0.0]
    assert other.json()["energy"]["thermal_wait_ms"] == 0.0
    assert cooled["thermal_wait_ms"] > 0 and cooled["machine"] == "a"
    assert health["machines"]["a"]["cooldowns"] == 1 and health["machines"]["b"]["cooldowns"] == 0


async def test_a_hot_machine_pauses_alone_from_its_meters_temperature(tmp_path: Path) -> None:
    a = LoopbackMachine("a", FakeBackend(models=("m",)), FakeWallMeter(100.0))
    b = LoopbackMachine("b", FakeBackend(models=("m",)), FakeWallMeter(100.0))
    a.meter.temperature_c = 95.0
    async with contextlib.AsyncExitStack() as stack:
        for m in (a, b):
            m.meter_url = await stack.enter_async_context(serve(m.meter, lifespan="off"))
            m.backend_url = await stack.enter_async_context(serve(m.backend, lifespan="off"))
        meters = a.settings().meters
        a.extra = {"meters": replace(meters, thermal_limit_c=85.0, thermal_resume_c=70.0)}
        jg = await stack.enter_async_context(gateway([a, b], tmp_path / "l.db"))
        c = await stack.enter_async_context(httpx.AsyncClient(base_url=jg.url, timeout=30))
        await until(lambda: jg.app.state.ctx.machines.by_name["a"].gate.paused)
        served = [(await c.post("/v1/chat/completions", json=chat("m"))).headers
                  ["x-joulegate-machine"] for _ in range(3)]  # fmt: skip
    assert served == ["b", "b", "b"]  # never queued behind the paused machine
    assert b.backend.max_in_flight == 1 and not a.backend.seen


async def test_a_model_change_cools_its_machine_down_first(tmp_path: Path) -> None:
    extra = {"cooldown_s": 0.4, "cooldown_on_model_change": True}
    a = LoopbackMachine("a", FakeBackend(models=("m", "n")), FakeWallMeter(100.0), extra=extra)
    async with contextlib.AsyncExitStack() as stack:
        a.meter_url = await stack.enter_async_context(serve(a.meter, lifespan="off"))
        a.backend_url = await stack.enter_async_context(serve(a.backend, lifespan="off"))
        jg = await stack.enter_async_context(gateway([a], tmp_path / "l.db"))
        c = await stack.enter_async_context(httpx.AsyncClient(base_url=jg.url, timeout=30))
        energy = [(await c.post("/v1/chat/completions", json=chat(m))).json()["energy"]
                  for m in ("m", "m", "n", "n", "m")]  # fmt: skip
        health = (await c.get("/healthz")).json()
    waits = [e["thermal_wait_ms"] for e in energy]
    assert waits[:2] == [0.0, 0.0] and waits[3] == 0.0
    assert waits[2] == waits[4] == 400.0  # the pause, counted as it was set
    assert health["machines"]["a"]["cooldowns"] == 2
