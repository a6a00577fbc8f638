"""Overlapping windows get their fair share (sampler intervals + the overlap book)."""

from __future__ import annotations

import pytest

from meters.sampler import Sampler
from meters.sharing import OverlapBook
from tests.meters_support import CurveMeter, VirtualClock


def test_two_overlapping_requests_share_the_meter_by_tokens() -> None:
    clock = VirtualClock(0.0)
    meter = CurveMeter(clock, lambda t: 100.0, lambda t: 100.0 * t, mode="counter")
    sampler = Sampler([meter], sample_hz=10.0, clock=clock)
    for _ in range(5):
        sampler.sample()
        clock.advance(0.1)
    book = OverlapBook()
    busy: list[tuple[float, int]] = []
    quiet: list[tuple[float, int]] = []
    book.open(1, 0.5, busy)
    book.open(2, 0.5, quiet)
    for _ in range(10):
        clock.advance(0.1)
        sampler.sample()
        busy.append((clock.t - 0.05, 3))
        quiet.append((clock.t - 0.05, 1))
    book.close(1, clock.t)
    sampler._tracks["machine"].idle_power_w = 40.0  # 60 W dynamic (no window froze it)
    intervals = sampler.intervals(0.5, clock.t)
    assert sum(i.energy_j for i in intervals) == pytest.approx(100.0, rel=1e-6)
    share = book.share(1, intervals, clock.t)
    assert share is not None
    assert share.method == "token_share" and share.concurrency_mean == pytest.approx(2.0)
    assert share.energy_j == pytest.approx(20.0 + 45.0, rel=1e-6)  # half the idle, 3/4 dynamic
