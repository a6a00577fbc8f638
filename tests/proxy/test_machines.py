"""Several measurement machines behind one joulegate, on loopback: each machine a fake
backend and a fake wall meter with its own power, through the real gate, sampler
and ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ledger import db_rows
from tests.support.machines import chat, gateway, loopback_machines, slow
from tests.support.telemetry import until


def _served(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    machine = r.headers["x-joulegate-machine"]
    assert r.json()["energy"]["machine"] == machine
    return machine


async def test_each_model_goes_to_the_machine_that_serves_it(tmp_path: Path) -> None:
    specs = [("rack-a", ("small",), 100.0), ("rack-b", ("large",), 300.0)]
    async with (
        loopback_machines(specs) as (a, b),
        gateway([a, b], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=10) as c,
    ):
        got = [_served(await c.post("/v1/chat/completions", json=chat(m)))
               for m in ("small", "large", "small")]  # fmt: skip
        missing = await c.post("/v1/chat/completions", json=chat("nobody"))
        models = (await c.get("/v1/models")).json()
    assert got == ["rack-a", "rack-b", "rack-a"]
    assert [s.json()["model"] for s in a.backend.seen] == ["small", "small"]
    assert [s.json()["model"] for s in b.backend.seen] == ["large"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert [m["id"] for m in models["data"]] == ["large", "small"]
    rows = db_rows(tmp_path / "l.db", "model_requested IS NOT NULL")
    assert [r["machine"] for r in rows] == ["rack-a", "rack-b", "rack-a"]


async def test_two_machines_work_at_once_while_each_stays_serialised(tmp_path: Path) -> None:
    specs = [("a", ("m",), 100.0), ("b", ("m",), 100.0)]
    async with (
        loopback_machines(specs) as (a, b),
        gateway([a, b], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        answers = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat("m"), headers=slow(150)) for _ in range(8))
        )
    machines = [_served(r) for r in answers]
    assert sorted(machines) == ["a"] * 4 + ["b"] * 4  # free slot first, ties in turn
    assert a.backend.max_in_flight == 1 and b.backend.max_in_flight == 1
    # While one machine served a request the other served one too.
    spans_a = [(s.started_s, s.finished_s) for s in a.backend.seen]
    spans_b = [(s.started_s, s.finished_s) for s in b.backend.seen]
    assert any(sa < (fb or 0) and sb < (fa or 0) for sa, fa in spans_a for sb, fb in spans_b)


async def test_ties_go_round_in_turn_per_model_even_when_models_alternate(
    tmp_path: Path,
) -> None:
    # One turn counter for all models sent every "big" of small/big/small/big... to the
    # same machine: each model's requests went to every other machine in lockstep.
    specs = [("a", ("small", "big"), 100.0), ("b", ("small", "big"), 100.0)]
    async with (
        loopback_machines(specs) as (a, b),
        gateway([a, b], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=10) as c,
    ):
        got = [(m, _served(await c.post("/v1/chat/completions", json=chat(m))))
               for m in ("small", "big") * 4]  # fmt: skip
    for model in ("small", "big"):
        machines = [where for m, where in got if m == model]
        assert sorted(machines) == ["a", "a", "b", "b"], got


async def test_a_request_never_waits_for_one_machine_while_another_is_idle(
    tmp_path: Path,
) -> None:
    specs = [("a", ("m",), 100.0), ("b", ("m",), 100.0)]
    hold = {"x-fake-hold": "1"}
    async with (
        loopback_machines(specs) as (a, b),
        gateway([a, b], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        post = c.post
        # Both machines busy (a with a held request, b with a slow one), then a third.
        held = asyncio.create_task(post("/v1/chat/completions", json=chat("m"), headers=hold))
        await until(lambda: bool(a.backend.in_flight or b.backend.in_flight))
        slow_one = asyncio.create_task(
            post("/v1/chat/completions", json=chat("m"), headers=slow(300))
        )
        await until(lambda: a.backend.in_flight + b.backend.in_flight == 2)
        third = await post("/v1/chat/completions", json=chat("m"))
        # It waited in both queues and was taken by the machine that freed first,
        # while the held request still holds the other.
        assert not held.done()
        slow_machine = _served(await slow_one)
        assert _served(third) == slow_machine
        a.backend.release()
        b.backend.release()
        assert _served(await held) != slow_machine


async def test_each_request_has_its_own_machines_energy(tmp_path: Path) -> None:
    specs = [("cool", ("m",), 60.0), ("hot", ("m",), 420.0)]
    async with (
        loopback_machines(specs) as (cool, hot),
        gateway([cool, hot], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        answers = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat("m"), headers=slow(200)) for _ in range(6))
        )
    power = {"cool": 60.0, "hot": 420.0}
    for r in answers:
        energy = r.json()["energy"]
        machine = _served(r)
        # A constant wall power: the meter's integral over the window is power x window.
        assert energy["energy_j"] == pytest.approx(power[machine] * energy["window_s"], rel=0.02)
        assert energy["exclusive"] is True and energy["meter"] == "prometheus"
        assert float(r.headers["x-energy-j"]) == pytest.approx(energy["energy_j"], abs=1e-3)
    rows = db_rows(tmp_path / "l.db", "model_requested IS NOT NULL")
    for row in rows:
        assert row["energy_j"] == pytest.approx(power[row["machine"]] * row["duration_s"], rel=0.02)


async def test_a_failed_meter_leaves_its_machine_unmeasured_never_borrowed(
    tmp_path: Path,
) -> None:
    specs = [("a", ("m",), 100.0), ("b", ("n",), 250.0)]
    async with (
        loopback_machines(specs) as (a, b),
        gateway([a, b], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        a.meter.failing = True
        reads = a.meter.reads
        await until(lambda: a.meter.reads >= reads + 3)  # the sampler has seen it fail
        broken = await c.post("/v1/chat/completions", json=chat("m"), headers=slow(100))
        fine = await c.post("/v1/chat/completions", json=chat("n"), headers=slow(100))
        ready = await c.get("/readyz")
    assert _served(broken) == "a" and _served(fine) == "b"
    assert broken.json()["energy"]["energy_j"] is None
    assert "reason" in broken.json()["energy"] and "x-energy-j" not in broken.headers
    assert fine.json()["energy"]["energy_j"] == pytest.approx(
        250.0 * fine.json()["energy"]["window_s"], rel=0.02
    )
    meters = {ch["machine"]: ch for ch in ready.json()["checks"] if ch["name"] == "meters"}
    assert meters["a"]["failing"] and not meters["b"]["failing"]


async def test_report_by_machine_sums_to_the_total(tmp_path: Path) -> None:
    specs = [("a", ("m",), 90.0), ("b", ("m", "n"), 200.0), ("c", ("n",), 30.0)]
    async with (
        loopback_machines(specs) as machines,
        gateway(machines, tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(m), headers=slow(50))
                               for m in ("m", "n") * 5))  # fmt: skip
        q = {"unit": "J"}
        by_machine = (await c.get("/v1/energy/report", params={**q, "by": "machine"})).json()
        by_user = (await c.get("/v1/energy/report", params={**q, "by": "user"})).json()
        metrics = (await c.get("/metrics")).text

    def total(report: dict[str, Any]) -> float:
        return float(sum(g["energy_j"] for g in report["groups"]))

    assert {g["machine"] for g in by_machine["groups"]} <= {"a", "b", "c"}
    assert sum(g["requests"] for g in by_machine["groups"]) == 10
    assert total(by_machine) == pytest.approx(total(by_user), rel=1e-9)
    assert total(by_machine) > 0
    in_flight = [ln for ln in metrics.splitlines() if ln.startswith("joulegate_machine_in_flight{")]
    assert sorted(ln.split('"')[1] for ln in in_flight) == ["a", "b", "c"]


async def test_a_batching_machine_shares_its_own_energy_between_its_requests(
    tmp_path: Path,
) -> None:
    specs = [("wide", ("m",), 300.0), ("narrow", ("n",), 50.0)]
    async with (
        loopback_machines(specs, max_concurrency=2) as (wide, narrow),
        gateway([wide, narrow], tmp_path / "l.db") as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        answers = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat("m"), headers=slow(300)) for _ in range(2))
        )
    energy = [r.json()["energy"] for r in answers]
    assert wide.backend.max_in_flight == 2
    assert {e["attribution"] for e in energy} <= {"token_share", "time_share"}
    # The two shares add up to the wide machine's energy over their windows, never
    # the narrow machine's.
    window_j = max(e["energy_window_j"] for e in energy)
    assert sum(e["energy_j"] for e in energy) == pytest.approx(window_j, rel=0.1)
    assert window_j == pytest.approx(300.0 * max(e["window_s"] for e in energy), rel=0.1)
