"""The Live page's data per machine: two loopback machines (each a fake backend and a
fake wall meter of its own power) behind one joulegate, through the real gates,
samplers and ledger, and the single-machine configuration as one machine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import AuthSettings, LedgerSettings
from meters import machines_component, meters_component
from proxy.console import console_component
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import db_rows
from tests.support.machines import LoopbackMachine, chat, gateway, loopback_machines
from tests.support.meters import SteadyMeter
from tests.support.serving import JoulegateApp
from tests.support.telemetry import FakeMeters, powering, until

SPECS = [("rack-a", ("small",), 100.0), ("rack-b", ("large",), 300.0)]
OPEN = AuthSettings(mode="open")  # everyone sees Live: no sign-in in these tests


def _components() -> list[Any]:
    return [accounting_resource, auth_component, machines_component, console_component,
            record_component]  # fmt: skip


@contextlib.asynccontextmanager
async def _fleet(
    tmp_path: Path, machines: list[LoopbackMachine]
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        gateway(machines, tmp_path / "l.db", components=_components(), auth=OPEN) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        yield c


async def _live(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get("/console/api/live")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _live_when(c: httpx.AsyncClient, ok: Any) -> dict[str, Any]:
    """The first Live answer for which ``ok(answer)`` holds (the samplers poll on)."""
    for _ in range(200):
        d = await _live(c)
        if ok(d):
            return d
        await asyncio.sleep(0.05)
    raise AssertionError(f"Live never showed it: {d}")


def _by_name(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in d["machines"]}


def _measured(d: dict[str, Any]) -> bool:
    return all(m["total_power_w"] is not None for m in d["machines"])


async def test_each_machine_shows_its_own_power_queue_meters_and_backends(
    tmp_path: Path,
) -> None:
    hold = {"x-fake-hold": "1"}
    async with loopback_machines(SPECS) as (a, b), _fleet(tmp_path, [a, b]) as c:
        busy = [asyncio.create_task(c.post("/v1/chat/completions", json=chat("small"),
                                           headers=hold)) for _ in range(2)]  # fmt: skip
        await until(lambda: a.backend.in_flight == 1)
        d = await _live_when(c, lambda d: _measured(d) and d["machines"][0]["waiting"] == 1)
        a.backend.release()
        assert all(r.status_code == 200 for r in await asyncio.gather(*busy))
        page = await c.get("/console/live")
    assert [m["name"] for m in d["machines"]] == ["rack-a", "rack-b"]  # the configured order
    ma, mb = d["machines"]
    assert (ma["in_flight"], ma["waiting"], ma["max_concurrency"], ma["state"]) == (1, 1, 1, "busy")
    assert (mb["in_flight"], mb["waiting"], mb["state"]) == (0, 0, "idle")
    # Each machine's power is its own wall meter's, never the other's.
    assert ma["total_power_w"] == pytest.approx(100.0, rel=0.02)
    assert mb["total_power_w"] == pytest.approx(300.0, rel=0.02)
    assert ma["power_w"] == {"machine": pytest.approx(100.0, rel=0.02)}
    for m in (ma, mb):
        assert m["local"] is False
        assert m["meters"] == {"label": "prometheus", "estimated": False, "failing": {}}
    assert [(x["backend"], x["ok"], x["models"]) for x in ma["backends"]] == [
        ("rack-a", True, ["small"])
    ]
    assert [(x["backend"], x["models"]) for x in mb["backends"]] == [("rack-b", ["large"])]
    # The gateway adds the machines up.
    total = d["total"]
    assert total["total_power_w"] == pytest.approx(ma["total_power_w"] + mb["total_power_w"])
    assert (total["machines"], total["machines_measured"], total["busy"]) == (2, 2, 1)
    assert (total["in_flight"], total["waiting"], total["max_concurrency"]) == (1, 1, 2)
    # The page has a panel per machine, named, before any script runs.
    assert page.status_code == 200
    assert 'data-machine="rack-a"' in page.text and 'data-machine="rack-b"' in page.text
    assert page.text.index('data-machine="rack-a"') < page.text.index('data-machine="rack-b"')


async def test_a_request_queued_for_two_machines_counts_once_in_the_gateways_queue(
    tmp_path: Path,
) -> None:
    specs = [("a", ("m",), 100.0), ("b", ("m",), 100.0)]
    hold = {"x-fake-hold": "1"}
    async with loopback_machines(specs) as (a, b), _fleet(tmp_path, [a, b]) as c:
        busy = [asyncio.create_task(c.post("/v1/chat/completions", json=chat("m"),
                                           headers=hold)) for _ in range(3)]  # fmt: skip
        await until(lambda: a.backend.in_flight == b.backend.in_flight == 1)
        d = await _live_when(c, lambda d: d["total"]["waiting"] == 1)
        a.backend.release()
        b.backend.release()
        assert all(r.status_code == 200 for r in await asyncio.gather(*busy))
    # It waits in both queues (whichever frees a slot first takes it): each machine
    # shows it, the gateway counts it once.
    assert [(m["in_flight"], m["waiting"]) for m in d["machines"]] == [(1, 1), (1, 1)]
    assert (d["total"]["in_flight"], d["total"]["waiting"]) == (2, 1)


async def test_each_machines_energy_since_start_up_is_its_own_rows_and_meters(
    tmp_path: Path,
) -> None:
    async with loopback_machines(SPECS) as (a, b), _fleet(tmp_path, [a, b]) as c:
        for model in ("small", "large", "small", "large", "large"):
            r = await c.post("/v1/chat/completions", json=chat(model),
                             headers={"x-fake-delay-ms": "60"})  # fmt: skip
            assert r.status_code == 200, r.text
        # The unattributed part is settled on each sampler tick (once a second here).
        d = await _live_when(c, lambda d: all(m["energy"]["unattributed_j"] for m in d["machines"]))
    rows = db_rows(tmp_path / "l.db", "energy_dynamic_j IS NOT NULL")
    assert {r["machine"] for r in rows} == {"rack-a", "rack-b"}
    for name, m in _by_name(d).items():
        mine = [r for r in rows if r["machine"] == name]
        e = m["energy"]
        idle_j = sum(r["energy_j"] - r["energy_dynamic_j"] for r in mine)
        assert e["attributed_idle_j"] == pytest.approx(idle_j)
        assert e["attributed_dynamic_j"] == pytest.approx(sum(r["energy_dynamic_j"] for r in mine))
        assert e["attributed_j"] == pytest.approx(idle_j + e["attributed_dynamic_j"])
        # Its meter's energy is its requests', the idle time's, and what the sampler has
        # not settled: since its last tick, and the tick before the remote meter's first
        # reading (a remote machine's sampler ticks once a second): never the other's.
        assert e["unattributed_j"] > 0
        power_w = m["total_power_w"]
        assert -0.05 * power_w <= e["unsettled_j"] <= 2.2 * power_w
        assert e["total_j"] == pytest.approx(
            e["attributed_j"] + e["unattributed_j"] + e["unsettled_j"]
        )
    t, machines = d["total"]["energy"], d["machines"]
    for key in ("total_j", "attributed_j", "unattributed_j", "unsettled_j"):
        assert t[key] == pytest.approx(sum(m["energy"][key] for m in machines))


async def test_a_hot_a_cooling_and_a_meterless_machine_each_say_so_on_their_own_panel(
    tmp_path: Path,
) -> None:
    specs = [("hot", ("m",), 100.0), ("cool", ("n",), 100.0), ("dark", ("o",), 100.0)]
    async with loopback_machines(specs) as (hot, cool, dark):
        hot.meter.temperature_c = 95.0
        meters = hot.settings().meters
        hot.extra = {"meters": replace(meters, thermal_limit_c=85.0, thermal_resume_c=70.0)}
        cool.extra = {"cooldown_s": 3600.0, "cooldown_every": 1}
        async with _fleet(tmp_path, [hot, cool, dark]) as c:
            assert (await c.post("/v1/chat/completions", json=chat("n"))).status_code == 200
            dark.meter.failing = True
            d = await _live_when(c, lambda d: bool(d["machines"][2]["meters"]["failing"])
                                 and d["machines"][0]["state"] == "thermal")  # fmt: skip
    m = _by_name(d)
    assert (m["hot"]["state"], m["hot"]["paused"]) == ("thermal", True)
    cool_down = (m["cool"]["state"], m["cool"]["paused"], m["cool"]["cooldowns"])
    assert cool_down == ("cooldown", True, 1)
    assert (m["dark"]["state"], m["dark"]["paused"]) == ("idle", False)
    assert list(m["dark"]["meters"]["failing"]) == ["prometheus"]
    assert m["hot"]["meters"]["failing"] == {} and m["cool"]["meters"]["failing"] == {}
    assert d["total"]["paused"] == 2


async def test_the_single_machine_configuration_is_one_local_machine(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    gpu, cpu = SteadyMeter(200.0, "gpu", name="nvml"), SteadyMeter(50.0, "cpu", name="rapl")
    meters = functools.partial(meters_component, meters=[gpu, cpu])
    components = [accounting_resource, auth_component, meters, console_component,
                  record_component]  # fmt: skip
    ledger = LedgerSettings(path=str(tmp_path / "l.db"))
    async with (
        joulegate_app(fake.url, components, ledger=ledger, auth=OPEN) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        assert (await c.post("/v1/chat/completions", json=chat("fake-model"))).status_code == 200
        d = await _live_when(c, _measured)
    (m,) = d["machines"]
    assert (m["name"], m["local"]) == ("local", True)
    assert m["power_w"] == {"gpu": pytest.approx(200.0, rel=0.02),
                            "cpu": pytest.approx(50.0, rel=0.02)}  # fmt: skip
    assert m["meters"]["label"] == "nvml+rapl"
    assert d["total"]["total_power_w"] == m["total_power_w"] == pytest.approx(250.0, rel=0.02)
    assert d["total"]["energy"] == m["energy"]
    row = db_rows(tmp_path / "l.db")[-1]
    assert m["energy"]["attributed_dynamic_j"] == pytest.approx(row["energy_dynamic_j"])


class StuckMeters(FakeMeters):
    """A sampler whose read waits (its lock held by a slow meter, say) until released."""

    def __init__(self) -> None:
        super().__init__([{"id": "machine", "type": "machine", "power_w": 120.0, "energy_j": 9.0}])
        self.entered = threading.Event()
        self.released = threading.Event()

    def device_readings(self) -> Any:
        self.entered.set()
        self.released.wait()
        return super().device_readings()


async def test_a_slow_sampler_read_never_holds_the_event_loop(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    meters = StuckMeters()
    failsafe = threading.Timer(10.0, meters.released.set)  # frees a loop the read blocked
    failsafe.start()
    components = [accounting_resource, auth_component, powering(meters), console_component,
                  record_component]  # fmt: skip
    ledger = LedgerSettings(path=str(tmp_path / "l.db"))
    try:
        async with (
            joulegate_app(fake.url, components, ledger=ledger, auth=OPEN) as jg,
            httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
        ):
            live = asyncio.create_task(c.get("/console/api/live"))
            await until(meters.entered.is_set)
            health = await c.get("/healthz")  # answered while Live's read waits
            answered_first = not live.done() and not meters.released.is_set()
            meters.released.set()
            d = (await live).json()
    finally:
        failsafe.cancel()
    assert health.status_code == 200 and answered_first
    assert d["machines"][0]["total_power_w"] == 120.0
