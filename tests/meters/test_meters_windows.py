"""Open windows: exclusivity and the oldest start without walking the crowd, and the
edge reads a crowd shares instead of one per request."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meters import Sampler
from meters.base import Reading
from meters.window import WindowToken
from meters.windows import OpenWindows
from tests.support.meters import SteadyMeter, VirtualClock


class CountingMeter(SteadyMeter):
    """A steady counter that counts its reads."""

    reads = 0

    def read(self) -> dict[str, Reading]:
        self.reads += 1
        return super().read()


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.floats(0.0, 100.0)),
                max_size=60))  # fmt: skip
@settings(max_examples=80, deadline=None)
def test_exclusive_and_oldest_agree_with_a_walk_over_every_window(
    ops: list[tuple[bool, int, float]],
) -> None:
    windows = OpenWindows()
    open_now: list[tuple[WindowToken, float, bool]] = []  # token, start, overlapped so far
    for opening, pick, start in ops:
        if opening or not open_now:
            token = windows.open(start)
            overlapped = bool(open_now)
            open_now = [(t, s, True) for t, s, _ in open_now]
            open_now.append((token, start, overlapped))
        else:
            token, _, overlapped = open_now.pop(pick % len(open_now))
            assert windows.close(token)
            assert token.exclusive is not overlapped
            assert not windows.close(token)
        for t, _, overlapped in open_now:
            assert windows.exclusive(t) is not overlapped
        assert windows.count == len(open_now)
        assert windows.oldest_s() == min((s for _, s, _ in open_now), default=None)


def test_a_closed_window_stays_exclusive_when_others_open_after_it() -> None:
    clock = VirtualClock()
    sampler = Sampler([SteadyMeter(10.0, "cpu")], clock=clock)
    sampler.sample()
    a = sampler.open_window(clock.t, sample_edge=False)
    sampler.close_window(a, clock.t + 0.1)
    b = sampler.open_window(clock.t + 0.2, sample_edge=False)
    assert sampler.measure(a, clock.t + 0.1).exclusive
    assert sampler.measure(b, clock.t + 0.3).exclusive  # a had ended when b opened


async def reads_after(meter: CountingMeter, before: int, settle_s: float = 0.1) -> int:
    """The meter's reads since ``before``, once the sampler thread has had time to act
    (a read seen sooner ends the wait: a loaded machine may take longer)."""
    for _ in range(round(settle_s / 0.01)):
        await asyncio.sleep(0.01)
        if meter.reads > before:
            break
    return meter.reads - before


async def test_only_a_window_opening_alone_wakes_the_sampler_for_its_edge() -> None:
    meter = CountingMeter(100.0, "gpu")
    sampler = Sampler([meter], sample_hz=1)  # ticks 1 s apart: any other read is an edge's
    await asyncio.to_thread(sampler.start)
    try:
        before = meter.reads
        first = sampler.open_window(time.monotonic())
        alone = await reads_after(meter, before, settle_s=0.5)
        before = meter.reads
        crowd = [sampler.open_window(time.monotonic()) for _ in range(20)]
        joined = await reads_after(meter, before)
        for token in [first, *crowd]:
            sampler.close_window(token, time.monotonic())
    finally:
        await asyncio.to_thread(sampler.close)
    assert alone == 1  # its start edge, read at once
    assert joined == 0  # twenty more in the crowd: their starts come from the ticks


async def test_the_ends_of_a_crowd_share_one_read_after_the_last_of_them() -> None:
    meter = CountingMeter(100.0, "gpu")
    sampler = Sampler([meter], sample_hz=1)  # ticks 1 s apart: any other read is an edge's
    await asyncio.to_thread(sampler.start)
    try:
        start = time.monotonic()
        tokens = [sampler.open_window(start, sample_edge=False) for _ in range(3)]
        await sampler.fresh_sample()  # a read now: the crowd's ends wait a quarter second
        before = meter.reads

        async def end(token: WindowToken, after_s: float) -> float:
            await asyncio.sleep(after_s)
            end_s = time.monotonic()
            await sampler.fresh_sample(token=token)
            energy = sampler.measure(token, end_s).energy_j
            sampler.close_window(token, end_s)
            assert energy is not None
            return energy / (end_s - start)

        powers = await asyncio.gather(*(end(t, 0.01 * i) for i, t in enumerate(tokens)))
        crowd_reads = meter.reads - before
    finally:
        await asyncio.to_thread(sampler.close)
    assert crowd_reads == 1  # three ends, one read
    assert powers == pytest.approx([100.0] * 3, rel=0.02)  # each end read after it
