"""Benchmark of the meters: the sampler's CPU cost and the latency metering adds.

1. Sampler CPU cost while idle: CPU seconds per minute of this process (all
   threads, ``time.process_time``) with the sampler running at 10 Hz and
   100 Hz over the meters this machine has, and over a fake RAPL tree (four
   zone files, as on a two-socket server), minus the same process idling
   without a sampler. Target: at most 1 % of one core at 10 Hz.
2. Added latency per request: joulegate with the gate alone against
   joulegate with the gate and the meters component (``python -m bench.meters
   serve gate|meters``), each in its own process (uvicorn, uvloop, httptools)
   in front of the fake backend (``bench.serve fake``), requests alternating
   between the two so machine load hits both alike. Reported: the difference
   of the p50s and p99s, and the median of the paired differences (each
   metered request minus the unmetered one sent next to it). Target: at most
   0.5 ms added at p50.

``make bench`` runs it with the others; ``python -m bench meters`` alone.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.serve import spawn
from config import MeterSettings, Settings
from meters.base import Meter
from meters.detect import detect_meters
from meters.rapl import RaplMeter
from meters.sampler import Sampler

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _fake_rapl_tree(root: Path) -> Path:
    for pkg in (0, 1):
        top = root / f"intel-rapl:{pkg}"
        for folder, name in ((top, f"package-{pkg}"), (top / f"intel-rapl:{pkg}:0", "dram")):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "name").write_text(name)
            (folder / "energy_uj").write_text("123456789")
            (folder / "max_energy_range_uj").write_text("262143328850")
    return root


def _cpu_s_per_min(meters: Sequence[Meter] | None, hz: float, seconds: float) -> float:
    sampler = Sampler(meters, sample_hz=hz) if meters is not None else None
    if sampler is not None:
        sampler.start()
    try:
        t0, c0 = time.monotonic(), time.process_time()
        time.sleep(seconds)
        t1, c1 = time.monotonic(), time.process_time()
    finally:
        if sampler is not None:
            sampler.stop()
    return (c1 - c0) / (t1 - t0) * 60.0


def sampler_cost(seconds: float) -> list[tuple[str, float, float]]:
    """(meters, Hz, CPU s per minute above idle) for each configuration."""
    rows: list[tuple[str, float, float]] = []
    baseline = _cpu_s_per_min(None, 10, seconds)
    local = detect_meters(MeterSettings()).meters
    with tempfile.TemporaryDirectory() as tmp:
        rapl = RaplMeter(_fake_rapl_tree(Path(tmp)))
        for label, meters in ((Sampler(local).label, local), ("rapl (fake tree, 4 zones)", [rapl])):
            for hz in (10.0, 100.0):
                rows.append((label, hz, max(0.0, _cpu_s_per_min(meters, hz, seconds) - baseline)))
        rapl.close()
    for meter in local:
        meter.close()
    return rows


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def added_latency(requests: int) -> dict[str, list[float]]:
    """Latency in ms of non-streaming chats through each joulegate, interleaved."""
    with (
        spawn("bench.serve", "fake", "PORT") as backend,
        spawn("bench.meters", "serve", "gate", "PORT", backend) as gate_only,
        spawn("bench.meters", "serve", "meters", "PORT", backend) as metered,
    ):
        out: dict[str, list[float]] = {"gate alone": [], "gate + meters": []}
        targets = (("gate alone", gate_only), ("gate + meters", metered))
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(requests + 100):
                for name, url in targets if i % 2 else targets[::-1]:
                    t = time.perf_counter()
                    r = await client.post(url + "/v1/chat/completions", json=CHAT)
                    elapsed_ms = (time.perf_counter() - t) * 1000
                    r.raise_for_status()
                    if i >= 100:  # warm-up left out
                        out[name].append(elapsed_ms)
                    assert ("x-energy-meter" in r.headers) == (name == "gate + meters")
    return out


def serve(kind: str, port: int, backend_url: str) -> None:
    """Serve joulegate with the gate alone or with the meters component (until killed)."""
    import uvicorn

    from meters import meters_component
    from proxy.app import create_app

    settings = Settings(backend_url=backend_url, log_level="warning")
    components = [meters_component] if kind == "meters" else []
    app = create_app(settings, components=components, route_handlers=[])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, lifespan="on")  # fmt: skip


async def main(seconds: float = 10.0, requests: int = 2000) -> None:
    """Run both parts and print Markdown tables."""
    print("\n### Meters: sampler CPU cost while idle\n")
    print("| meters | rate | CPU s per minute | share of one core | target |")
    print("| --- | --- | --- | --- | --- |")
    for label, hz, cpu in await asyncio.to_thread(sampler_cost, seconds):
        target = "<= 0.6 s/min (1 %)" if hz == 10 else ""
        print(f"| {label} | {hz:g} Hz | {cpu:.3f} | {cpu / 60 * 100:.2f} % | {target} |")

    print("\n### Meters: latency added per request (fake backend, loopback, 2 cores shared)\n")
    lat = await added_latency(requests)
    base, metered = lat["gate alone"], lat["gate + meters"]
    print("| joulegate | requests | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    for name, values in lat.items():
        print(f"| {name} | {len(values)} | {_pct(values, 50):.3f} | {_pct(values, 99):.3f} |")
    d50 = _pct(metered, 50) - _pct(base, 50)
    d99 = _pct(metered, 99) - _pct(base, 99)
    paired = statistics.median(m - b for m, b in zip(metered, base, strict=True))
    print(f"| **added by metering** | | **{d50:+.3f}** | {d99:+.3f} |")
    print(f"| median of paired differences | | {paired:+.3f} | |")
    print("\nTarget: at most +0.5 ms at p50.")


def _cli(argv: Sequence[str]) -> None:
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]), argv[3])
        return
    seconds = float(argv[0]) if argv else 10.0
    requests = int(argv[1]) if len(argv) > 1 else 2000
    asyncio.run(main(seconds, requests))


if __name__ == "__main__":
    _cli(sys.argv[1:])
