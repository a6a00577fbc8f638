"""NVML with a fake module: counter, power-only GPUs, errors and low resolution."""

from __future__ import annotations

import pytest

from config.errors import MeterError, MeterUnavailable
from meters.base import MeterAbsent
from meters.nvml import NvmlMeter
from meters.sampler import Sampler
from tests.support.meters import FakeGpu, FakeNvml, VirtualClock


def test_counter_and_power_are_read_in_joules_and_watts() -> None:
    nvml = FakeNvml([FakeGpu(energy_mj=2_000_000, power_mw=250_000),
                     FakeGpu(energy_mj=500_000, power_mw=50_500)])  # fmt: skip
    meter = NvmlMeter(nvml)
    assert meter.uses_counter
    (reading,) = meter.read().values()
    assert reading.energy_j == pytest.approx(2500.0)
    assert reading.power_w == pytest.approx(300.5)
    assert meter.temperatures_c() == {"gpu0": 45.0, "gpu1": 45.0}
    assert meter.describe() == "nvml: 2 GPUs (NVIDIA H100 80GB HBM3), energy counter"


def test_chosen_indices_only() -> None:
    nvml = FakeNvml([FakeGpu(power_mw=100_000), FakeGpu(power_mw=7_000)])
    meter = NvmlMeter(nvml, indices=[1])
    assert meter.read()["gpu"].power_w == pytest.approx(7.0)
    with pytest.raises(MeterUnavailable, match="index 5 not present"):
        NvmlMeter(nvml, indices=[5])


def test_gpu_without_counter_falls_back_to_power() -> None:
    nvml = FakeNvml([FakeGpu(counter_supported=False, power_mw=80_000)])
    meter = NvmlMeter(nvml)
    assert not meter.uses_counter
    assert "power polling" in meter.describe() and "Not Supported" in meter.describe()
    reading = meter.read()["gpu"]
    assert reading.energy_j is None and reading.power_w == pytest.approx(80.0)


def test_missing_library_or_gpu_is_absent_not_a_crash() -> None:
    with pytest.raises(MeterAbsent, match="Library Not Found"):
        NvmlMeter(FakeNvml(init_error=12))
    with pytest.raises(MeterAbsent, match="no NVIDIA GPU"):
        NvmlMeter(FakeNvml(gpus=[]))
    with pytest.raises(MeterUnavailable, match="Insufficient Permissions") as info:
        NvmlMeter(FakeNvml(init_error=4))
    assert not isinstance(info.value, MeterAbsent)  # worth a warning: it can be fixed


def test_nvml_errors_are_translated_at_the_boundary() -> None:
    nvml = FakeNvml()
    meter = NvmlMeter(nvml)
    nvml.read_error = 15
    with pytest.raises(MeterError, match="GPU is lost") as info:
        meter.read()
    assert isinstance(info.value.__cause__, nvml.NVMLError)
    with pytest.raises(MeterError):
        meter.temperatures_c()
    meter.close()
    meter.close()
    assert nvml.shutdowns == 1


def _sampled(nvml: FakeNvml, clock: VirtualClock) -> tuple[Sampler, FakeGpu]:
    gpu = nvml.gpus[0]
    sampler = Sampler([NvmlMeter(nvml)], sample_hz=10, clock=clock)
    return sampler, gpu


def test_short_window_uses_power_and_is_flagged_low_resolution() -> None:
    clock = VirtualClock()
    nvml = FakeNvml([FakeGpu(energy_mj=0, power_mw=200_000)])
    sampler, _ = _sampled(nvml, clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    sampler.sample()
    clock.advance(0.04)  # 40 ms: the counter (updated every ~100 ms) has not moved
    sampler.sample()
    energy = sampler.measure(token, clock.t)
    gpu_part = energy.components["gpu"]
    assert gpu_part.low_resolution and energy.low_resolution
    assert gpu_part.energy_j == pytest.approx(200.0 * 0.04)


def test_long_window_uses_the_counter() -> None:
    clock = VirtualClock()
    nvml = FakeNvml([FakeGpu(energy_mj=0, power_mw=999_000)])  # power is deliberately off
    sampler, gpu = _sampled(nvml, clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    for _ in range(5):
        clock.advance(0.1)
        gpu.energy_mj += 30_000  # 300 W for 100 ms
        sampler.sample()
    energy = sampler.measure(token, clock.t)
    assert not energy.low_resolution
    assert energy.energy_j == pytest.approx(150.0)
    assert energy.meter == "nvml"


def test_error_mid_window_gives_null_and_reason_not_zero() -> None:
    clock = VirtualClock()
    nvml = FakeNvml([FakeGpu(energy_mj=0)])
    sampler, _ = _sampled(nvml, clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    clock.advance(0.5)
    nvml.read_error = 15
    sampler.sample()  # the end-of-window sample fails
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j is None and energy.components["gpu"].energy_j is None
    assert "GPU is lost" in (energy.reason or "")
    assert sampler.failing() == {"nvml": "NVML read: GPU is lost"}
