"""Benchmark of several measurement machines behind one joulegate (``[[machines]]``).

1. **Scheduling cost** per request at 1, 4 and 16 machines serving one model: the
   fleet's choice (:meth:`~proxy.machines.Fleet.candidates`), the admission
   (:meth:`~proxy.machines.Fleet.admit`) and the release, in this process on its
   event loop, with every machine idle and with all but one busy (the worst scan).
   Target: at most 50 us.
2. **Throughput**: one joulegate in front of 4 fake machines of 1 slot each, against 4
   separate single-machine joulegates, one per fake machine (each ``python -m
   bench.serve full`` with its ``[[machines]]`` file; the fake backends answer after
   ``DELAY_MS``, as a machine busy with a request would; each machine's wall meter is a
   Prometheus endpoint). The same closed-loop clients (4 per machine) drive both,
   rounds alternating. Target: at least 95 %.
3. **Sampler CPU** with 16 remote meters polled at 10 Hz (16 machines, one Prometheus
   wall meter each, served by another process): CPU seconds of this process per
   second, minus the same process idle, as a share of one core. Target: at most 2 %.

``make bench`` runs it with the others; ``python -m bench machines [--quick]`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvicorn

from bench.serve import spawn
from config import BackendSettings, MeterSettings
from config.machines import MachineSettings
from meters.detect import detect_remote_meters
from meters.machines import REMOTE_ONLY_TICK_HZ
from meters.poller import Poller
from meters.sampler import Sampler
from proxy.gate import Window
from proxy.machines import Fleet, build_machine

DELAY_MS = 40
"""How long a fake machine takes per request."""
CLIENTS_PER_MACHINE = 4
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
METRICS = "# TYPE wall_power_watts gauge\nwall_power_watts 123.0\n"


# -- 1. scheduling -----------------------------------------------------------------------


def _fleet(n: int, client: httpx.AsyncClient) -> Fleet:
    machines = [
        build_machine(
            MachineSettings(
                name=f"m{i}",
                backends=(BackendSettings(url=f"http://127.0.0.1:{9000 + i}", models=("m",)),),
            ),
            client,
        )
        for i in range(n)
    ]
    return Fleet(machines, client)


async def _schedule_us(n: int, busy: int, rounds: int) -> float:
    """Mean us per request to choose, admit and release with ``busy`` machines held."""
    async with httpx.AsyncClient() as client:
        fleet = _fleet(n, client)
        for m in fleet.machines[:busy]:
            await m.gate.acquire(Window(0.0))
        t0 = time.perf_counter()
        for _ in range(rounds):
            window = Window(0.0)
            machine = await fleet.admit(fleet.candidates("m"), window, "m")
            machine.gate.release(0.01)
        return (time.perf_counter() - t0) / rounds * 1e6


# -- 2. throughput -----------------------------------------------------------------------


def _machine_toml(name: str, backend_url: str, meter_url: str) -> str:
    return (
        f'[[machines]]\nname = "{name}"\nmax_concurrency = 1\n'
        f'[machines.meters]\nprometheus_url = "{meter_url}/metrics"\n'
        'prometheus_metric = "wall_power_watts"\nprometheus_unit = "W"\n'
        f'[[machines.backends]]\nurl = "{backend_url}"\n'
    )


async def _drive(urls: list[str], clients_each: int, seconds: float) -> float:
    """Answers per second from ``clients_each`` closed-loop clients per URL."""
    done = 0
    stop = time.monotonic() + seconds
    headers = {"x-fake-delay-ms": str(DELAY_MS)}

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.post(url + "/v1/chat/completions", json=CHAT,
                                    headers=headers) as r:  # fmt: skip
                await r.read()
                done += r.status == 200

    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        await asyncio.gather(*(client(session, u) for u in urls for _ in range(clients_each)))
        return done / (time.monotonic() - t0)


@contextlib.contextmanager
def _joulegates(folder: Path, backends: list[str], meter: str) -> Iterator[tuple[str, list[str]]]:
    """One joulegate over every machine, and one per machine."""
    tomls = [_machine_toml(f"m{i}", b, meter) for i, b in enumerate(backends)]
    (folder / "all.toml").write_text("\n".join(tomls))
    with contextlib.ExitStack() as stack:

        def joulegate(backend: str, config: Path) -> str:
            env = {"JOULEGATE_CONFIG": str(config)}
            return stack.enter_context(spawn("bench.serve", "full", "PORT", backend, env=env))

        one = joulegate(backends[0], folder / "all.toml")
        each = []
        for i, text in enumerate(tomls):
            (folder / f"m{i}.toml").write_text(text)
            each.append(joulegate(backends[i], folder / f"m{i}.toml"))
        yield one, each


async def _throughput(machines: int, seconds: float, rounds: int) -> tuple[float, float]:
    """(one joulegate, separate joulegates): median answers per second over the rounds."""
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jg-machines-")))
        meter = stack.enter_context(spawn("bench.machines", "meter", "PORT"))
        backends = [stack.enter_context(spawn("bench.serve", "fake", "PORT"))
                    for _ in range(machines)]  # fmt: skip
        one, each = stack.enter_context(_joulegates(folder, backends, meter))
        await _drive([one], CLIENTS_PER_MACHINE * machines, 1.0)  # warm both up
        await _drive(each, CLIENTS_PER_MACHINE, 1.0)
        fleet, separate = [], []
        for _ in range(rounds):
            fleet.append(await _drive([one], CLIENTS_PER_MACHINE * machines, seconds))
            separate.append(await _drive(each, CLIENTS_PER_MACHINE, seconds))
        return statistics.median(fleet), statistics.median(separate)


# -- 3. sampler CPU ----------------------------------------------------------------------


def _sampler_cpu_pct(meters: int, hz: float, seconds: float) -> tuple[float, int]:
    """(% of one core the samplers take, reads made) with ``meters`` remote meters."""
    with spawn("bench.machines", "meter", "PORT") as url:
        settings = MeterSettings(
            kinds=("prometheus",), prometheus_url=url + "/metrics",
            prometheus_metric="wall_power_watts", prometheus_unit="W", external_hz=hz,
        )  # fmt: skip
        idle = _cpu_per_s(seconds)
        poller = Poller()  # one for every machine, as meters.machines builds it
        samplers = [
            Sampler(
                detect_remote_meters(settings, ("prometheus",)).meters,
                external_hz=hz,
                sample_hz=REMOTE_ONLY_TICK_HZ,
                poller=poller,
            )
            for _ in range(meters)
        ]
        for s in samplers:
            s.start()
        try:
            busy = _cpu_per_s(seconds)
        finally:
            for s in samplers:
                s.close()
            poller.stop()
    return 100.0 * max(0.0, busy - idle), len(samplers)


def _cpu_per_s(seconds: float) -> float:
    t0, c0 = time.monotonic(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.monotonic() - t0)


async def main(quick: bool = "--quick" in sys.argv) -> None:
    """Run the three measurements and print their tables."""
    rounds = 4_000 if quick else 20_000
    print("\nmachines: scheduling cost per request (choose + admit + release; best and")
    print("median of 5 runs; the best is the cost, the rest is other processes' noise)")
    print(f"{'machines':>9} {'all idle us':>16} {'all but one busy us':>20}  target <= 50 us")
    for n in (1, 4, 16):
        idle = [await _schedule_us(n, 0, rounds) for _ in range(5)]
        busy = [await _schedule_us(n, n - 1, rounds) for _ in range(5)]
        cells = [f"{min(x):.2f} ({statistics.median(x):.2f})" for x in (idle, busy)]
        print(f"{n:>9} {cells[0]:>16} {cells[1]:>20}")
    seconds, trials = (5.0, 1) if quick else (10.0, 3)
    fleet, separate = await _throughput(4, seconds, trials)
    print(
        f"\nmachines: throughput, 4 fake machines x 1 slot ({DELAY_MS} ms a request, "
        f"{CLIENTS_PER_MACHINE} clients per machine, median of {trials} x {seconds:.0f} s)"
    )
    print(f"  one joulegate, 4 machines: {fleet:8.1f} req/s")
    print(f"  4 separate joulegates:     {separate:8.1f} req/s")
    print(f"  ratio: {100 * fleet / separate:.1f} %  target >= 95 %")
    pct, n = await asyncio.to_thread(_sampler_cpu_pct, 16, 10.0, 5.0 if quick else 20.0)
    print(f"\nmachines: sampler CPU, {n} remote meters at 10 Hz: {pct:.2f} % of one core"
          "  target <= 2 %")  # fmt: skip


async def _meter(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A wall meter's Prometheus endpoint (``python -m bench.machines meter PORT``)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")]})  # fmt: skip
    await send({"type": "http.response.body", "body": METRICS.encode()})


if __name__ == "__main__":
    if sys.argv[1:2] == ["meter"]:
        uvicorn.run(_meter, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                    access_log=False, lifespan="off")  # fmt: skip
    else:
        asyncio.run(main())
