"""Overlapping windows get their fair share (sampler intervals + the overlap book)."""

from __future__ import annotations

import pytest

from meters.attribution import Interval, Work, attribute
from meters.base import Meter, Reading
from meters.sampler import Sampler
from meters.sharing import KEEP_S, OverlapBook
from tests.support.meters import CurveMeter, VirtualClock


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
    book.open("a", 0.5, lambda now: Work(0.5, now, busy))
    book.open("b", 0.5, lambda now: Work(0.5, now, quiet))
    for _ in range(10):
        clock.advance(0.1)
        sampler.sample()
        busy.append((clock.t - 0.05, 3))
        quiet.append((clock.t - 0.05, 1))
    book.close("a", clock.t)
    sampler._tracks["machine"].idle_power_w = 40.0  # 60 W dynamic (no window froze it)
    intervals = sampler.intervals(0.5, clock.t)
    assert sum(i.energy_j for i in intervals) == pytest.approx(100.0, rel=1e-6)
    share = book.share("a", intervals, clock.t)
    assert share is not None
    assert share.method == "token_share" and share.concurrency_mean == pytest.approx(2.0)
    assert share.energy_j == pytest.approx(20.0 + 45.0, rel=1e-6)  # half the idle, 3/4 dynamic


def _grid(start_s: float, end_s: float, power_w: float = 100.0) -> list[Interval]:
    n = round((end_s - start_s) / 0.1)
    return [
        Interval(start_s + k * 0.1, start_s + (k + 1) * 0.1, power_w * 0.1, 40.0) for k in range(n)
    ]


def test_settling_keeps_the_meter_total_when_work_is_learnt_late() -> None:
    # "s" streams tokens and ends first; "w" is a whole answer whose timings (all its
    # decode in its last 0.5 s) arrive only at its end. "s" is charged while "w" looks
    # idle (a time share); "w" must then take exactly what is left, not a fresh split.
    book = OverlapBook()
    s_events = [(0.05 + 0.1 * k, 1) for k in range(10)]
    book.open("s", 0.0, lambda now: Work(0.0, now, s_events))
    book.open("w", 0.0, lambda now: Work(0.0, now))
    book.close("s", 1.0)
    s = book.share("s", _grid(0.0, 1.0), 1.0)
    book.close("w", 2.0)
    late = Work(0.0, 2.0, (), 0.0, 1.5, decode_tokens=20.0, decode_end_s=2.0)
    book._entries["w"].final = late  # what its timings said once it ended
    w = book.share("w", _grid(0.0, 2.0), 2.0)
    assert s is not None and w is not None
    assert s.energy_j == pytest.approx(50.0)  # half of [0, 1]: "w" showed no work yet
    assert w.energy_j + s.energy_j == pytest.approx(200.0, rel=1e-12)  # the meter's 2 s
    # A fresh split with what is known at the end would leave 30 J of [0, 1] to nobody.
    fresh = attribute(_grid(0.0, 2.0), [Work(0.0, 1.0, s_events), late])
    assert fresh.shares[1].energy_j + s.energy_j == pytest.approx(170.0)


def test_edges_are_the_known_windows_inside_the_span() -> None:
    book = OverlapBook()
    book.open("a", 1.0, lambda now: Work(1.0, now))
    book.open("b", 2.0, lambda now: Work(2.0, now))
    book.close("a", 3.0)
    assert sorted(book.edges(0.5, 2.5)) == [1.0, 2.0]
    assert sorted(book.edges(1.0, 5.0)) == [2.0, 3.0]


def test_requests_are_kept_by_request_id_and_forgotten_after_a_minute() -> None:
    """A finished request stays readable for KEEP_S (a minute) after it ended, counted
    from the latest close, and is forgotten past it: the book cannot grow without bound."""
    assert KEEP_S == 60.0
    book = OverlapBook()
    book.open("gone", 0.0, lambda now: Work(0.0, now))
    book.close("gone", 38.9)  # ends 61.1 s before the last close below
    book.open("kept", 40.0, lambda now: Work(40.0, now))
    book.close("kept", 41.1)  # ends 58.9 s before it
    book.open("last", 99.0, lambda now: Work(99.0, now))
    book.close("last", 100.0)
    assert book.share("gone", _grid(0.0, 38.9), 100.0) is None
    assert book.share("kept", _grid(40.0, 41.1), 100.0) is not None
    assert book.share("last", _grid(99.0, 100.0), 100.0) is not None
    book.open("later", 160.0, lambda now: Work(160.0, now))
    book.close("later", 161.2)  # now "kept" ended 120.1 s before the last close
    assert book.share("kept", _grid(40.0, 41.1), 161.2) is None


class _CoarseCounter(Meter):
    """A counter that ticks every 10 ms (like /proc/stat jiffies) and reports a power
    that disagrees with it: short spans alone would be measured from the power."""

    name = "coarse"
    counter_resolution_s = 0.01

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock

    @property
    def components(self) -> tuple[str, ...]:
        return ("machine",)

    def read(self) -> dict[str, Reading]:
        t = self._clock()
        return {"machine": Reading(energy_j=100.0 * (t // 0.01) * 0.01, power_w=250.0)}


def test_intervals_add_up_to_the_window_even_when_cut_finer_than_the_counter() -> None:
    clock = VirtualClock(0.0)
    sampler = Sampler([_CoarseCounter(clock)], sample_hz=10.0, clock=clock)
    for _ in range(11):
        sampler.sample()
        clock.advance(0.1)
    cuts = [0.3 + 0.003 * k for k in range(1, 30)]  # spans of 3 ms, under the 10 ms tick
    pieces = sampler.intervals(0.2, 0.9, cuts)
    whole = sampler.intervals(0.2, 0.9)
    assert len(pieces) > len(whole) + 20
    whole_j = sum(i.energy_j for i in whole)
    assert whole_j == pytest.approx(70.0, abs=1.0)  # the counter's, not 250 W x 0.7 s
    assert sum(i.energy_j for i in pieces) == pytest.approx(whole_j, rel=1e-9)


def test_a_finished_request_lets_its_exchange_go_and_keeps_its_final_work() -> None:
    book = OverlapBook()
    asked: list[float] = []

    def source(now_s: float) -> Work:
        asked.append(now_s)
        return Work(0.0, now_s, [(0.5, 2)])

    book.open("r", 0.0, source)
    book.close("r", 1.0)
    entry = book._entries["r"]
    assert entry.source is None and entry.final == Work(0.0, 1.0, [(0.5, 2)])
    assert book.share("r", _grid(0.0, 1.0), 5.0) is not None
    assert asked == [1.0]  # asked once, at its end
