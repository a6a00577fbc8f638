"""The poller: every machine's remote meters read from one thread, none holding another.

Each wall meter is a :class:`~tests.support.machines.FakeWallMeter` on loopback (a
Prometheus endpoint served in the test's loop, whose scrapes can be held
unanswered), read by a real :class:`~meters.prometheus.PrometheusMeter` over the
poller's own connections. Waits are guards against hanging, never speed checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from meters.poller import Poller
from meters.prometheus import PrometheusMeter
from meters.sampler import Sampler
from tests.support.machines import FakeWallMeter
from tests.support.meters import DroppingMeter, RecordingSink
from tests.support.serving import serve

HZ = 20.0
INTERVAL_S = 1.0 / HZ


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``condition`` holds (a guard against hanging, not a speed test)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


Wall = tuple[FakeWallMeter, str, PrometheusMeter]
"""A fake wall meter, its ``/metrics`` URL and a real meter reading it."""


@contextlib.asynccontextmanager
async def wall_meters(*powers_w: float) -> AsyncIterator[list[Wall]]:
    """One fake wall meter per power, each with its meter (closed at the end)."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for power_w in powers_w:
            fake = FakeWallMeter(power_w)
            url = await stack.enter_async_context(serve(fake, lifespan="off")) + "/metrics"
            meter = await asyncio.to_thread(  # its probe is a blocking read
                PrometheusMeter, url, "wall_power_watts", unit="W",
                temperature_metric="wall_temperature_celsius",
            )  # fmt: skip
            stack.callback(meter.close)
            out.append((fake, url, meter))
        try:
            yield out
        finally:
            for fake, _, _ in out:
                fake.release.set()  # no scrape left hanging in the server


def poller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "joulegate-poller"]


async def test_a_hung_meter_holds_no_other_machines_readings() -> None:
    async with wall_meters(100.0, 200.0) as [(hung, _, meter_a), (_, _, meter_b)]:
        a, b = RecordingSink(), RecordingSink()
        poller = Poller(timeout_s=60.0)  # the hung read stays in flight all along
        hung.hold = True
        try:
            await asyncio.to_thread(poller.add, a, meter_a, INTERVAL_S, time.monotonic)
            await asyncio.to_thread(poller.add, b, meter_b, INTERVAL_S, time.monotonic)
            await until(lambda: hung.held == 1)
            before = len(b.records)
            await until(lambda: len(b.records) >= before + 10)
            # Ten of b's intervals went by with a's read in flight: a got nothing yet, and
            # b's readings kept coming (a poller waiting on a would have given b none).
            assert hung.held == 1 and a.records == []
            assert b.powers_w()[-10:] == [200.0] * 10
            hung.release.set()
            await until(lambda: len(a.records) >= 1)
            assert a.powers_w()[0] == 100.0  # the held scrape's answer, once released
        finally:
            hung.release.set()
            await asyncio.to_thread(poller.stop)


async def test_each_reading_goes_to_the_machine_whose_meter_gave_it() -> None:
    powers = (100.0, 200.0, 300.0)
    async with wall_meters(*powers) as fakes:
        sinks = [RecordingSink() for _ in powers]
        poller = Poller()
        try:
            for sink, (_, _, meter) in zip(sinks, fakes, strict=True):
                await asyncio.to_thread(poller.add, sink, meter, INTERVAL_S, time.monotonic)
            await until(lambda: all(len(s.records) >= 10 for s in sinks))
        finally:
            await asyncio.to_thread(poller.stop)
        for sink, power_w in zip(sinks, powers, strict=True):
            assert set(sink.powers_w()) == {power_w} and sink.errors() == []
            times = [t for *_, t in sink.records]
            assert times == sorted(times)  # timestamped as they arrived, in order


async def test_stop_returns_with_a_read_in_flight_and_no_thread_left() -> None:
    async with wall_meters(100.0) as [(hung, _, meter)]:
        sink = RecordingSink()
        poller = Poller(timeout_s=60.0)
        hung.hold = True
        await asyncio.to_thread(poller.add, sink, meter, INTERVAL_S, time.monotonic)
        await until(lambda: hung.held == 1)
        assert poller_threads()
        # A thread blocked in the read would outlive stop()'s join; the loop is woken.
        await asyncio.wait_for(asyncio.to_thread(poller.stop, timeout_s=5.0), timeout=30)
        assert not poller.running and poller_threads() == []
        assert sink.records == []  # the abandoned read reached no one


async def test_a_removed_machine_gets_no_more_readings_and_its_meter_no_more_requests() -> None:
    async with wall_meters(100.0, 200.0) as [(gone, _, meter_a), (_, _, meter_b)]:
        a, b = RecordingSink(), RecordingSink()
        poller = Poller()
        try:
            await asyncio.to_thread(poller.add, a, meter_a, INTERVAL_S, time.monotonic)
            await asyncio.to_thread(poller.add, b, meter_b, INTERVAL_S, time.monotonic)
            await until(lambda: len(a.records) >= 3)
            await asyncio.to_thread(poller.remove, a)
            records, reads = len(a.records), gone.reads
            await until(lambda: len(b.records) >= 20)
            assert (len(a.records), gone.reads) == (records, reads)
        finally:
            await asyncio.to_thread(poller.stop)


async def test_a_meter_that_stops_answering_times_out_on_its_own_machine_only() -> None:
    async with wall_meters(100.0, 200.0) as [(hung, hung_url, meter_a), (_, _, meter_b)]:
        a, b = RecordingSink(), RecordingSink()
        poller = Poller(timeout_s=4 * INTERVAL_S)
        try:
            await asyncio.to_thread(poller.add, a, meter_a, INTERVAL_S, time.monotonic)
            await asyncio.to_thread(poller.add, b, meter_b, INTERVAL_S, time.monotonic)
            await until(lambda: len(a.records) >= 2)
            hung.hold = True
            await until(lambda: len(a.errors()) >= 2)
        finally:
            hung.release.set()
            await asyncio.to_thread(poller.stop)
    assert all("TimeoutError" in e and hung_url in e for e in a.errors())
    assert b.errors() == [] and set(b.powers_w()) == {200.0}


async def test_a_failing_meter_is_reported_on_its_own_machine_never_another() -> None:
    async with wall_meters(100.0, 200.0) as walls:
        broken = walls[0][0]
        poller = Poller()
        samplers = [
            Sampler([meter], sample_hz=1.0, external_hz=HZ, poller=poller) for _, _, meter in walls
        ]
        try:
            for sampler in samplers:
                await asyncio.to_thread(sampler.start)
            broken.failing = True
            reads = broken.reads
            await until(lambda: broken.reads >= reads + 3 and bool(samplers[0].failing()))
            failing_a, failing_b = samplers[0].failing(), samplers[1].failing()
            power_b = samplers[1].power_w(over_s=INTERVAL_S)
        finally:
            for sampler in samplers:
                await asyncio.to_thread(sampler.close)
            await asyncio.to_thread(poller.stop)
    assert "answered 500" in failing_a["prometheus"]
    assert failing_b == {} and power_b == {"machine": pytest.approx(200.0)}


async def test_a_meter_that_drops_its_connections_is_read_without_an_error() -> None:
    fake = DroppingMeter(150.0)
    meter = await asyncio.to_thread(PrometheusMeter, fake.url, "wall_power_watts", unit="W")
    sink, poller = RecordingSink(), Poller()
    try:
        await asyncio.to_thread(poller.add, sink, meter, INTERVAL_S, time.monotonic)
        await until(lambda: len(sink.records) >= 10)
    finally:
        await asyncio.to_thread(poller.stop)
        meter.close()
        fake.close()
    assert sink.errors() == [] and set(sink.powers_w()) == {150.0}
    assert fake.connections >= 10  # every read on a new connection
