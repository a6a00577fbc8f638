"""The meters stage in the proxy: headers, the energy body, streams, failures, thermal guard."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx
import pytest

from config import MeterSettings
from meters import meters_component
from meters.thermal import ThermalGuard
from proxy.gate import Gate, Window
from tests.support.fake_backend import FakeBackend
from tests.support.meters import SteadyMeter
from tests.support.serving import JoulegateApp, sse_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
DELAY = {"x-fake-delay-ms": "200"}


def component(*meters: SteadyMeter) -> Any:
    return functools.partial(meters_component, meters=list(meters))


async def test_non_streaming_response_carries_energy_headers_and_body(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    gpu, cpu = SteadyMeter(200.0, "gpu", name="nvml"), SteadyMeter(50.0, "cpu", name="rapl")
    async with joulegate_app(fake.url, [component(gpu, cpu)]) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=DELAY)
    assert r.status_code == 200
    e = r.json()["energy"]
    window_s = e["window_s"]
    assert window_s == pytest.approx(e["duration_ms"] / 1000, abs=1e-3)
    assert window_s >= 0.2
    assert e["energy_j"] == pytest.approx(250.0 * window_s, rel=0.01)
    assert e["power_w"] == pytest.approx(250.0, rel=0.01)
    assert e["energy_wh"] == pytest.approx(e["energy_j"] / 3600, rel=1e-4)
    assert e["idle_power_w"] == pytest.approx(250.0, rel=0.01)
    assert 0 <= e["energy_dynamic_j"] < 0.05 * e["energy_j"]  # steady power: nothing dynamic
    assert e["meter"] == "nvml+rapl" and e["estimated"] is False and e["exclusive"] is True
    assert e["attribution"] == "exclusive" and e["concurrency_mean"] == 1.0
    assert e["components"]["gpu"]["energy_j"] == pytest.approx(200.0 * window_s, rel=0.01)
    assert e["components"]["cpu"]["power_w"] == pytest.approx(50.0, rel=0.01)
    assert e["components"]["gpu"]["meter"] == "nvml"
    assert "reason" not in e
    h = r.headers
    assert float(h["x-energy-j"]) == pytest.approx(e["energy_j"], abs=1e-3)
    assert float(h["x-energy-gpu-j"]) == pytest.approx(e["components"]["gpu"]["energy_j"], abs=1e-3)
    assert float(h["x-energy-cpu-j"]) == pytest.approx(e["components"]["cpu"]["energy_j"], abs=1e-3)
    assert float(h["x-power-w"]) == pytest.approx(250.0, rel=0.01)
    assert float(h["x-energy-dynamic-j"]) >= 0
    assert h["x-energy-meter"] == "nvml+rapl"
    assert h["x-energy-estimated"] == "false"
    assert h["x-thermal-wait-ms"] == "0.0"
    assert "x-energy-machine-j" not in h  # not measured here


async def test_stream_carries_energy_in_its_last_data_chunk(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    gpu = SteadyMeter(100.0, "gpu", name="nvml")
    async with joulegate_app(fake.url, [component(gpu)]) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                         headers={"x-fake-chunk-delay-ms": "40"})  # fmt: skip
    events = sse_events(r.content)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "length"
    e = last["energy"]
    assert e["window_s"] >= 0.16
    assert e["energy_j"] == pytest.approx(100.0 * e["window_s"], rel=0.01)
    assert e["meter"] == "nvml"
    assert all("energy" not in ev for ev in events[:-2])
    assert "x-energy-j" not in r.headers  # a stream's headers leave before its energy is known


async def test_failed_meter_gives_null_and_a_reason_never_zero(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    gpu, cpu = SteadyMeter(200.0, "gpu", name="nvml"), SteadyMeter(50.0, "cpu", name="rapl")
    async with joulegate_app(fake.url, [component(gpu, cpu)]) as jg, httpx.AsyncClient() as c:
        gpu.fail = "NVML read: GPU is lost"
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=DELAY)
        readyz = (await c.get(jg.url + "/readyz")).json()
    assert r.status_code == 200
    e = r.json()["energy"]
    assert e["energy_j"] is None and e["power_w"] is None and e["energy_dynamic_j"] is None
    assert e["reason"] == "gpu: nvml: NVML read: GPU is lost"
    assert e["components"]["gpu"]["energy_j"] is None
    assert e["components"]["gpu"]["reason"] == "nvml: NVML read: GPU is lost"
    assert e["components"]["cpu"]["energy_j"] == pytest.approx(50.0 * e["window_s"], rel=0.02)
    assert "x-energy-j" not in r.headers and "x-energy-gpu-j" not in r.headers
    assert "x-energy-cpu-j" in r.headers
    assert r.headers["x-energy-meter"] == "nvml+rapl"
    (check,) = [c for c in readyz["checks"] if c["name"] == "meters"]
    assert check["failing"] == {"nvml": "NVML read: GPU is lost"} and check["ok"] is True
    # What each meter reads, for the AI Energy Score run's hardware check.
    assert check["devices"] == ["nvml: gpu", "rapl: cpu"]


async def test_estimates_are_labelled(fake: FakeBackend, joulegate_app: JoulegateApp) -> None:
    cpu = SteadyMeter(30.0, "cpu", name="estimate", estimated=True)
    async with joulegate_app(fake.url, [component(cpu)]) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/completions", json={"model": "m", "prompt": "hi"})
        models = await c.get(jg.url + "/v1/models")
    assert r.headers["x-energy-estimated"] == "true"
    assert r.headers["x-energy-meter"] == "estimate"
    assert r.json()["energy"]["estimated"] is True
    assert r.json()["energy"]["components"]["cpu"]["estimated"] is True
    assert "x-energy-j" not in models.headers  # not gated: no window, no energy


async def test_thermal_guard_pauses_and_resumes_the_gate(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    gpu = SteadyMeter(100.0, "gpu", name="nvml")
    gpu.temperature_c = 91.0
    meters = MeterSettings(thermal_limit_c=85.0, thermal_resume_c=75.0)
    async with (
        joulegate_app(fake.url, [component(gpu)], meters=meters) as jg,
        httpx.AsyncClient(timeout=10) as c,
    ):
        for _ in range(100):
            if jg.gate.paused:
                break
            await asyncio.sleep(0.01)
        assert jg.gate.paused
        pending = asyncio.create_task(c.post(jg.url + "/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.3)
        assert not pending.done() and fake.seen == []
        gpu.temperature_c = 60.0
        r = await pending
    assert r.status_code == 200
    assert float(r.headers["x-thermal-wait-ms"]) >= 250
    assert r.json()["energy"]["thermal_wait_ms"] >= 250


async def test_guard_logic_on_a_real_gate() -> None:
    gate = Gate(1, 10)
    temps = {"gpu0": 65.0, "cpu": 50.0}
    guard = ThermalGuard(gate, lambda: temps, limit_c=80.0, resume_c=70.0)
    guard.check(temps)
    assert not gate.paused
    temps["cpu"] = 80.0
    guard.check(temps)
    assert gate.paused
    waiter = asyncio.create_task(gate.acquire(Window(arrived_s=0.0)))
    await asyncio.sleep(0.01)
    temps["cpu"] = 72.0  # below the limit but not below the resume level: still paused
    guard.check(temps)
    assert gate.paused and not waiter.done()
    temps["cpu"] = 69.0
    guard.check(temps)
    await asyncio.wait_for(waiter, 1)
    assert not gate.paused
    gate.pause()
    guard.check({})  # sensors gone: never hold requests on what cannot be read
    assert not gate.paused
