"""One contract every meter keeps, run against each implementation (with fakes)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from config.errors import MeterUnavailable
from meters.base import COMPONENTS, Meter, MeterAbsent
from meters.estimate import EstimateMeter
from meters.ipmi import IpmiMeter
from meters.nvml import NvmlMeter
from meters.plug import ShellyMeter, TasmotaMeter
from meters.prometheus import PrometheusMeter
from meters.rapl import RaplMeter
from tests.support.meters import FakeGpu, FakeNvml, fake_proc, rapl_tree, runner_returning


def _http(body: str) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text=body)))


FACTORIES: dict[str, Callable[[Path], Meter]] = {
    "nvml-counter": lambda p: NvmlMeter(FakeNvml()),
    "nvml-power": lambda p: NvmlMeter(FakeNvml([FakeGpu(counter_supported=False)])),
    "rapl": lambda p: RaplMeter(rapl_tree(p), psys=True),
    "prometheus-gauge": lambda p: PrometheusMeter("http://e/metrics", "w", unit="W",
                                                  client=_http("w 12.5\n")),
    "prometheus-counter": lambda p: PrometheusMeter("http://e/metrics", "e", unit="uJ",
                                                    client=_http("e_total 5e9\n")),
    "ipmi": lambda p: IpmiMeter(runner_returning("Instantaneous power reading: 300 Watts\n")),
    "shelly": lambda p: ShellyMeter("http://s", client=_http(json.dumps({"apower": 20.0}))),
    "tasmota": lambda p: TasmotaMeter(
        "http://t", client=_http(json.dumps({"StatusSNS": {"ENERGY": {"Power": 7}}}))
    ),
    "estimate": lambda p: EstimateMeter(proc_root=fake_proc(p), gpu_board_power_w=250.0),
}  # fmt: skip


@pytest.fixture(params=sorted(FACTORIES))
def meter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Meter]:
    m = FACTORIES[request.param](tmp_path)
    yield m
    m.close()


def test_components_are_known_and_unique(meter: Meter) -> None:
    assert meter.components
    assert set(meter.components) <= set(COMPONENTS)
    assert len(set(meter.components)) == len(meter.components)


def test_read_gives_every_component_in_joules_or_watts(meter: Meter) -> None:
    first = meter.read()
    second = meter.read()
    assert set(first) == set(meter.components) == set(second)
    for c, reading in second.items():
        assert reading.energy_j is not None or reading.power_w is not None
        for value in (reading.energy_j, reading.power_w):
            assert value is None or (isinstance(value, float) and value >= 0)
        if reading.energy_j is not None:
            assert reading.energy_j >= (first[c].energy_j or 0.0)  # counters never go down


def test_description_names_the_meter_and_flags_are_consistent(meter: Meter) -> None:
    assert meter.describe().startswith(meter.name + ":")
    assert meter.max_poll_interval_s > 0
    assert meter.estimated == (meter.name == "estimate")
    assert meter.remote == (meter.name in ("prometheus", "ipmi", "shelly", "tasmota"))
    assert all(isinstance(v, float) for v in meter.temperatures_c().values())


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_close_twice_releases_every_descriptor_once(kind: str, tmp_path: Path) -> None:
    """A meter kept open for a sampler's lifetime (RAPL's counter files, the estimate's
    ``/proc/stat``) gives every descriptor back on close, and a second close (shutdown
    after a failed start) neither raises nor closes someone else's descriptor."""
    before = _open_fds()
    meter = FACTORIES[kind](tmp_path)
    meter.read()
    meter.close()
    after_first = _open_fds()
    meter.close()
    assert after_first <= before, f"{kind} left {sorted(after_first - before)} open"
    assert _open_fds() == after_first


@pytest.mark.parametrize("counter", [True, False], ids=["nvml-counter", "nvml-power"])
def test_nvml_is_shut_down_exactly_once_per_init(counter: bool) -> None:
    nvml = FakeNvml([FakeGpu(counter_supported=counter)])
    meter = NvmlMeter(nvml)
    assert (nvml.inits, nvml.shutdowns) == (1, 0)  # held open while the meter is in use
    meter.close()
    meter.close()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
    NvmlMeter(nvml).close()  # a second meter inits and shuts down again
    assert (nvml.inits, nvml.shutdowns) == (2, 2)


def test_nvml_failing_after_init_is_shut_down_and_never_inited_is_not() -> None:
    nvml = FakeNvml()
    with pytest.raises(MeterUnavailable, match="index 5"):
        NvmlMeter(nvml, indices=[5])
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
    no_gpu = FakeNvml(gpus=[])
    with pytest.raises(MeterAbsent):
        NvmlMeter(no_gpu)
    assert (no_gpu.inits, no_gpu.shutdowns) == (1, 1)
    no_driver = FakeNvml(init_error=12)
    with pytest.raises(MeterAbsent):
        NvmlMeter(no_driver)
    assert (no_driver.inits, no_driver.shutdowns) == (0, 0)
