"""The sampler: idle and dynamic energy, totals, gaps, remote meters and its thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meters import Sampler, total_components
from meters.base import Meter, Reading
from tests.support.meters import CurveMeter, SteadyMeter, VirtualClock


def constant(clock: VirtualClock, watts: float, component: str, **kw: object) -> CurveMeter:
    return CurveMeter(clock, lambda t: watts, lambda t: watts * t, component=component, **kw)  # type: ignore[arg-type]


def tick(sampler: Sampler, clock: VirtualClock, seconds: float, hz: float = 10.0) -> None:
    for _ in range(round(seconds * hz)):
        clock.advance(1.0 / hz)
        sampler.sample()


def test_total_never_counts_a_part_twice() -> None:
    assert total_components(("gpu", "cpu", "dram")) == ("cpu", "dram", "gpu")
    assert total_components(("gpu", "cpu", "dram", "psys")) == ("psys", "gpu")
    assert total_components(("gpu", "cpu", "machine")) == ("machine",)
    assert total_components(()) == ()


def test_idle_power_and_dynamic_energy() -> None:
    clock = VirtualClock()
    power = {"w": 60.0}
    meter = CurveMeter(clock, lambda t: power["w"], lambda t: 0.0, component="cpu")
    sampler = Sampler([meter], sample_hz=10, clock=clock)
    sampler.sample()
    tick(sampler, clock, 30)  # idle at 60 W long enough for the average to settle
    power["w"] = 200.0
    token = sampler.open_window(clock.t)
    sampler.sample()
    tick(sampler, clock, 2)
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j == pytest.approx(400.0, rel=1e-6)
    assert energy.idle_power_w == pytest.approx(60.0)
    assert energy.dynamic_j == pytest.approx(400.0 - 120.0, rel=1e-6)
    assert energy.power_w == pytest.approx(200.0)
    assert energy.exclusive
    # A tick whose interval overlaps the window's end is not idle: the figure stays.
    clock.advance(0.05)
    sampler.close_window(token, clock.t)
    clock.advance(0.05)
    sampler.sample()
    later = sampler.measure(sampler.open_window(clock.t), clock.t)
    assert later.idle_power_w == pytest.approx(60.0)


def test_components_from_several_meters_and_the_first_meter_wins_a_component() -> None:
    clock = VirtualClock()
    gpu = constant(clock, 300.0, "gpu", mode="counter", name="nvml")
    cpu = constant(clock, 50.0, "cpu", mode="counter", name="rapl")
    extra = constant(clock, 999.0, "gpu", name="estimate")
    sampler = Sampler([gpu, cpu, extra], clock=clock)
    assert sampler.components == ("gpu", "cpu")
    assert sampler.ignored == ["estimate's gpu (nvml has it)"]
    assert sampler.label == "nvml+rapl"
    sampler.sample()
    token = sampler.open_window(clock.t)
    tick(sampler, clock, 1)
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j == pytest.approx(350.0)
    assert energy.components["gpu"].energy_j == pytest.approx(300.0)
    assert energy.meter == "nvml+rapl" and not energy.estimated


def test_machine_meter_is_the_total_when_present() -> None:
    clock = VirtualClock()
    meters = [constant(clock, 300.0, "gpu", mode="counter", name="nvml"),
              constant(clock, 450.0, "machine", name="shelly")]  # fmt: skip
    sampler = Sampler(meters, clock=clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    tick(sampler, clock, 2)
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j == pytest.approx(900.0)
    assert energy.components["gpu"].energy_j == pytest.approx(600.0)


def test_a_failed_gauge_read_inside_the_window_gives_null_with_the_reason() -> None:
    clock = VirtualClock()
    machine = constant(clock, 100.0, "machine", name="ipmi")
    gpu = constant(clock, 200.0, "gpu", mode="counter", name="nvml")
    sampler = Sampler([gpu, machine], clock=clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    tick(sampler, clock, 0.5)
    machine.fail = "BMC did not answer"
    tick(sampler, clock, 0.2)
    machine.fail = None
    tick(sampler, clock, 0.3)
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j is None
    assert energy.reason == "machine: ipmi: BMC did not answer"
    assert energy.components["machine"].reason == "ipmi: BMC did not answer"
    assert energy.components["gpu"].energy_j == pytest.approx(200.0)  # its counter is fine
    # The next window, after the meter recovered, is measured again.
    token = sampler.open_window(clock.t)
    tick(sampler, clock, 1)
    assert sampler.measure(token, clock.t).energy_j == pytest.approx(100.0)


class RemoteGauge(Meter):
    """A slow whole-machine meter whose power the test sets."""

    name = "plug"
    remote = True

    def __init__(self) -> None:
        self.power_w = 80.0

    @property
    def components(self) -> tuple[str, ...]:
        return ("machine",)

    def read(self) -> dict[str, Reading]:
        return {"machine": Reading(power_w=self.power_w)}


def test_remote_meter_between_polls_holds_its_last_power() -> None:
    clock = VirtualClock()
    plug = RemoteGauge()
    sampler = Sampler([plug], clock=clock)
    sampler.read_meter(plug)
    clock.advance(0.3)
    token = sampler.open_window(clock.t)
    sampler.sample()  # a tick reads only local meters: nothing here
    clock.advance(0.4)
    energy = sampler.measure(token, clock.t)
    assert energy.energy_j == pytest.approx(80.0 * 0.4)


class Buggy(Meter):
    """A meter with a bug (not a MeterError)."""

    name = "buggy"

    @property
    def components(self) -> tuple[str, ...]:
        return ("cpu",)

    def read(self) -> dict[str, Reading]:
        raise ZeroDivisionError("oops")


def test_a_buggy_meter_degrades_instead_of_stopping_the_sampler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    sampler = Sampler([Buggy(), constant(clock, 10.0, "gpu", mode="counter")], clock=clock)
    sampler.sample()
    assert sampler.failing() == {"buggy": "ZeroDivisionError: oops"}
    assert "meter buggy failed unexpectedly" in caplog.text


def test_history_is_pruned_behind_the_oldest_open_window() -> None:
    clock = VirtualClock()
    sampler = Sampler([constant(clock, 10.0, "cpu", mode="counter")], sample_hz=100, clock=clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    tick(sampler, clock, 20, hz=100)
    track = sampler._tracks["cpu"]
    assert len(track.times) > 2000  # the open window keeps its start
    assert sampler.measure(token, clock.t).energy_j == pytest.approx(200.0)
    sampler.close_window(token, clock.t)
    tick(sampler, clock, 20, hz=100)
    assert len(track.times) < 1000


def test_overlapping_windows_are_not_exclusive() -> None:
    clock = VirtualClock()
    sampler = Sampler([constant(clock, 10.0, "cpu", mode="counter")], clock=clock)
    sampler.sample()
    a = sampler.open_window(clock.t)
    tick(sampler, clock, 0.5)
    b = sampler.open_window(clock.t)
    assert not sampler.measure(a, clock.t).exclusive
    assert not sampler.measure(b, clock.t).exclusive


async def test_fresh_sample_is_one_hop_to_the_running_thread() -> None:
    meter = SteadyMeter(100.0, "gpu", counter=True)
    sampler = Sampler([meter], sample_hz=1)  # ticks are 1 s apart: only a fresh read helps
    await asyncio.to_thread(sampler.start)
    try:
        start = time.monotonic()
        token = sampler.open_window(start)
        await asyncio.sleep(0.05)
        end = time.monotonic()
        t = time.perf_counter()
        await sampler.fresh_sample()
        hop_s = time.perf_counter() - t
        energy = sampler.measure(token, end)
        sampler.close_window(token, end)
    finally:
        await asyncio.to_thread(sampler.close)
    assert hop_s < sampler.interval_s / 4  # answered well before the next tick
    assert energy.energy_j == pytest.approx(100.0 * (end - start), rel=0.02)
    assert not sampler.running


class Counting(Meter):
    """A local meter that notes when each read happens and whether it was closed."""

    name = "counting"

    def __init__(self, component: str = "cpu") -> None:
        self.component = component
        self.read_at: list[float] = []
        self.closed = False

    @property
    def components(self) -> tuple[str, ...]:
        return (self.component,)

    def read(self) -> dict[str, Reading]:
        self.read_at.append(time.monotonic())
        return {self.component: Reading(power_w=10.0)}

    def close(self) -> None:
        self.closed = True


class CountingRemote(Counting):
    """The same, polled by its own thread like a smart plug."""

    name = "counting-plug"
    remote = True


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``condition`` until it holds (a guard against hanging, not a speed test)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def spans_in_samples(read_at: list[float], interval_s: float) -> float:
    """How many sampling intervals the reads span, by the clock."""
    return (read_at[-1] - read_at[0]) / interval_s


SAMPLE_HZ, EXTERNAL_HZ = 20.0, 10.0


async def test_threads_sample_at_the_configured_rates_and_stop_on_close() -> None:
    local, remote = Counting("cpu"), CountingRemote("machine")
    sampler = Sampler([local, remote], sample_hz=SAMPLE_HZ, external_hz=EXTERNAL_HZ)
    await asyncio.to_thread(sampler.start)
    try:
        start_reads = len(local.read_at), len(remote.read_at)  # start()'s own reads
        await until(lambda: len(local.read_at) >= start_reads[0] + 21, timeout_s=30)
        await until(lambda: len(remote.read_at) >= start_reads[1] + 11, timeout_s=30)
        assert sampler.running
    finally:
        await asyncio.to_thread(sampler.close)
    # 21 ticks span 20 intervals of 50 ms and 11 polls 10 of 100 ms; a few samples of slack
    # for scheduling, far less than a thread at the other rate (or twice as fast) would miss.
    ticks = local.read_at[start_reads[0] :][:21]
    polls = remote.read_at[start_reads[1] :][:11]
    assert 16 <= spans_in_samples(ticks, 1 / SAMPLE_HZ) <= 24
    assert 7 <= spans_in_samples(polls, 1 / EXTERNAL_HZ) <= 13
    assert not sampler.running and local.closed and remote.closed
    after_close = len(local.read_at), len(remote.read_at)
    await asyncio.sleep(10 / SAMPLE_HZ)  # ten ticks and five polls, were the threads running
    assert (len(local.read_at), len(remote.read_at)) == after_close


class Held(Counting):
    """A local meter whose reads block, once told to, until the test releases them."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.hold = False
        self.blocked = threading.Event()
        self.release = threading.Event()

    def read(self) -> dict[str, Reading]:
        if self.hold:
            self.blocked.set()
            self.release.wait(30)
        return super().read()


async def test_fresh_sample_gives_up_after_its_timeout_when_the_thread_is_stuck() -> None:
    meter = Held()
    sampler = Sampler([meter], sample_hz=10)
    await asyncio.to_thread(sampler.start)
    try:
        meter.hold = True
        assert await asyncio.to_thread(meter.blocked.wait, 10)  # the thread is stuck in read
        reads = len(meter.read_at)
        # Without the timeout this would wait for the stuck read: the guard turns that
        # hang into a failure (it is not a measure of speed).
        await asyncio.wait_for(sampler.fresh_sample(timeout_s=0.05), timeout=10)
        assert len(meter.read_at) == reads  # it gave up: no sample was taken for it
    finally:
        meter.release.set()
        await asyncio.to_thread(sampler.close)
    assert len(meter.read_at) > reads  # the stuck read did finish once released


def test_meter_error_is_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "joulegate.meters")
    clock = VirtualClock()
    meter = constant(clock, 10.0, "cpu", mode="counter")
    sampler = Sampler([meter], clock=clock)
    meter.fail = "gone"
    for _ in range(5):
        sampler.sample()
    meter.fail = None
    sampler.sample()
    assert caplog.text.count("degraded: gone") == 1
    assert "reads again" in caplog.text


@pytest.mark.parametrize("mode", ["counter", "gauge"])
def test_device_energy_since_start_up_survives_pruning(mode: str) -> None:
    clock = VirtualClock()
    sampler = Sampler([constant(clock, 10.0, "cpu", mode=mode)], sample_hz=100, clock=clock)
    sampler.sample()
    tick(sampler, clock, 30, hz=100)  # long enough for the history to be pruned
    assert len(sampler._tracks["cpu"].times) < 3000
    (cpu,) = sampler.device_readings()
    assert cpu["id"] == "cpu" and cpu["type"] == "cpu"
    assert cpu["energy_j"] == pytest.approx(300.0)  # 10 W for 30 s, all of it
    assert cpu["power_w"] == pytest.approx(10.0)


class Jiffies(CurveMeter):
    """A counter meter that, like ``/proc/stat``, only moves every ``period_s``; counts reads."""

    def __init__(self, clock: VirtualClock, power_w: float, period_s: float) -> None:
        super().__init__(
            clock,
            lambda t: power_w,
            lambda t: power_w * (t - t % period_s),  # whole periods only
            component="cpu",
            mode="counter",
        )
        self.update_period_s = period_s
        self.reads = 0

    def read(self) -> dict[str, Reading]:
        self.reads += 1
        return super().read()


@pytest.mark.parametrize("gap_s", [0.0, 0.003, 0.0099])
async def test_an_edge_within_the_meters_update_period_reads_nothing(gap_s: float) -> None:
    clock = VirtualClock(1000.0)
    meter = Jiffies(clock, 50.0, period_s=0.01)
    sampler = Sampler([meter], sample_hz=10, clock=clock)
    tick(sampler, clock, 1.0)
    reads = meter.reads
    clock.advance(gap_s)
    token = sampler.open_window(clock.t)
    clock.advance(0.01 - gap_s - 1e-6)  # still within one period of the last sample
    await sampler.fresh_sample()
    energy = sampler.measure(token, clock.t)
    assert meter.reads == reads  # neither edge read: the counter could not have moved
    # The window is extended from the last sample's power, what the counter shows on average.
    assert energy.energy_j == pytest.approx(50.0 * (0.01 - gap_s - 1e-6), rel=1e-6)


async def test_an_edge_past_the_update_period_reads_and_a_zero_period_always_reads() -> None:
    clock = VirtualClock(1000.0)
    slow = Jiffies(clock, 50.0, period_s=0.01)
    sampler = Sampler([slow], sample_hz=10, clock=clock)
    tick(sampler, clock, 1.0)
    clock.advance(0.02)
    reads = slow.reads
    await sampler.fresh_sample()  # no thread running: read inline, off the loop
    assert slow.reads == reads + 1
    # One meter that always reads makes every edge read, the slow one included.
    exact = constant(clock, 10.0, "gpu")
    both = Sampler([slow, exact], sample_hz=10, clock=clock)
    both.sample()
    reads = slow.reads
    await both.fresh_sample()
    await both.fresh_sample()
    assert slow.reads == reads + 2


@given(
    st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.001, 0.5)), min_size=0, max_size=8),
    st.floats(20.0, 300.0),
)
@settings(max_examples=60, deadline=None)
def test_the_energy_outside_every_window_is_what_is_left_unattributed(
    windows: list[tuple[float, float]], watts: float
) -> None:
    clock = VirtualClock(100.0)
    meter = CurveMeter(clock, lambda t: watts, lambda t: watts * t, component="cpu",
                       mode="counter")  # fmt: skip
    sampler = Sampler([meter], sample_hz=10, clock=clock)
    sampler.sample()
    t0 = clock.t
    events = sorted(
        [(t0 + s, "open", i) for i, (s, _) in enumerate(windows)]
        + [(t0 + s + d, "close", i) for i, (s, d) in enumerate(windows)]
    )
    tokens = {}
    step = 0.01  # 100 Hz here, ticks at 10 Hz: windows open and close between reads
    end = t0 + 3.0
    while clock.t < end - 1e-9:
        clock.advance(step)
        while events and events[0][0] <= clock.t:
            t, what, i = events.pop(0)
            if what == "open":
                tokens[i] = sampler.open_window(t, sample_edge=False)
            else:
                sampler.close_window(tokens.pop(i), t)
        if round((clock.t - t0) / step) % 10 == 0:
            sampler.sample()
    # Exactly what no window covered, from the first read to the last.
    covered = 0.0
    cursor = t0
    for a, b in sorted((t0 + s, min(t0 + s + d, clock.t)) for s, d in windows):
        a = max(a, cursor)
        if b > a:
            covered, cursor = covered + (b - a), b
    assert sampler.unattributed_j == pytest.approx(watts * (clock.t - t0 - covered), abs=1e-6)
