"""On a real NVIDIA GPU: the energy counter and integrated power agree.

Runs only where NVML finds a GPU with an energy counter and torch or cupy can
put load on it; elsewhere each test is skipped with the reason (``-ra`` prints
it). NVML's power reading is a short running average on recent GPUs, so the
window reaches from 1 s before the load to 2 s after it: both figures then
cover the whole burst and only their errors differ.
"""

from __future__ import annotations

import importlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config.errors import MeterUnavailable
from meters.nvml import NvmlMeter
from meters.sampler import Sampler

pytestmark = pytest.mark.gpu

LOAD_S = 5.0


@pytest.fixture
def nvml_meter() -> Iterator[NvmlMeter]:
    try:
        meter = NvmlMeter()
    except MeterUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU with NVML here ({exc})")
    if not meter.uses_counter:
        meter.close()
        pytest.skip(f"this GPU has no energy counter ({meter.counter_reason})")
    yield meter
    meter.close()


def _torch_load(torch: Any) -> Callable[[float], None]:
    def run(seconds: float) -> None:
        a = torch.randn(8192, 8192, device="cuda")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(8):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()

    return run


def _cupy_load(cp: Any) -> Callable[[float], None]:
    def run(seconds: float) -> None:
        a = cp.random.standard_normal((8192, 8192), dtype=cp.float32)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(8):
                a = cp.clip(a @ a, -1, 1)
            cp.cuda.Device().synchronize()

    return run


def gpu_load() -> Callable[[float], None]:
    """A function that keeps GPU 0 busy for the given seconds (torch, else cupy)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        pass
    else:
        if torch.cuda.is_available():
            return _torch_load(torch)
    try:
        return _cupy_load(importlib.import_module("cupy"))
    except ImportError:
        pytest.skip("no way to load the GPU: neither torch (with CUDA) nor cupy is installed")


def test_counter_energy_agrees_with_integrated_power(nvml_meter: NvmlMeter) -> None:
    load = gpu_load()
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            r = nvml_meter.read()["gpu"]
            assert r.energy_j is not None and r.power_w is not None
            samples.append((time.monotonic(), r.energy_j, r.power_w))
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)
    load(LOAD_S)
    time.sleep(2.0)
    stop.set()
    poller.join()
    counter_j = samples[-1][1] - samples[0][1]
    pairs = itertools.pairwise(samples)
    integrated_j = sum((p0 + p1) / 2 * (t1 - t0) for (t0, _, p0), (t1, _, p1) in pairs)
    duration_s = samples[-1][0] - samples[0][0]
    assert counter_j / duration_s > 20, "the GPU drew almost nothing: is the load on it?"
    assert integrated_j == pytest.approx(counter_j, rel=0.05)


def test_window_around_a_known_load_is_measured(nvml_meter: NvmlMeter) -> None:
    load = gpu_load()
    sampler = Sampler([nvml_meter], sample_hz=10)
    sampler.start()
    try:
        time.sleep(1.0)
        idle_w = sampler.power_w(0.5)["gpu"]
        start = time.monotonic()
        token = sampler.open_window(start)
        load(LOAD_S)
        time.sleep(2.0)
        end = time.monotonic()
        sampler.sample()
        energy = sampler.measure(token, end)
        sampler.close_window(token, end)
    finally:
        sampler.stop()
    assert energy.energy_j is not None and not energy.low_resolution
    assert idle_w is not None
    # The burst must show: well above what the idle GPU draws over the same time.
    assert energy.energy_j > 1.5 * idle_w * (end - start)
    assert energy.dynamic_j is not None and energy.dynamic_j > 0
