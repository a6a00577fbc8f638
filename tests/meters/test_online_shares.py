"""Shares split online, interval by interval, as the closer does it behind the proxy."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.attribution import quantile, simulate
from meters.attribution import Interval, Work, attribute
from meters.closer import ShareCloser
from meters.sampler import Sampler
from meters.sharing import OverlapBook
from tests.support.meters import SteadyMeter


def _grid(n: int, energy_j: float = 10.0, idle_w: float = 40.0) -> list[Interval]:
    return [Interval(k * 0.1, (k + 1) * 0.1, energy_j, idle_w) for k in range(n)]


def _book_of(works: list[Work]) -> OverlapBook:
    """Every request opened and closed in time order, as the proxy would."""
    book = OverlapBook()
    steps = [(w.start_s, 1, i) for i, w in enumerate(works)]
    steps += [(w.end_s, 0, i) for i, w in enumerate(works)]
    for t, opening, i in sorted(steps):
        if opening:
            book.open(str(i), t, lambda now, w=works[i]: w)
        else:
            book.close(str(i), t)
    return book


reqs = st.lists(
    st.tuples(st.floats(0.0, 2.0), st.floats(0.01, 1.0), st.integers(0, 5)),
    min_size=1, max_size=6,
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(reqs=reqs, cuts=st.lists(st.integers(1, 29), max_size=4))
def test_split_in_batches_gives_what_the_whole_attribution_gives(
    reqs: list[tuple[float, float, int]], cuts: list[int]
) -> None:
    # Known work (every request finished): splitting the intervals a few at a time, as
    # the closer does while requests run, charges each what attribute() would.
    works = [
        Work(s, s + d, [(s + d * (j + 0.5) / n, 1.0) for j in range(n)], 20.0, s + d / 4)
        for s, d, n in reqs
    ]
    intervals = _grid(30)
    book = _book_of(works)
    edges = [0, *sorted(set(cuts)), len(intervals)]
    for lo, hi in itertools.pairwise(edges):
        book.split(intervals[lo:hi], intervals[-1].end_s)
    whole = attribute(intervals, works)
    for i, expected in enumerate(whole.shares):
        got = book.charged(str(i))
        if expected.energy_j == 0:
            continue  # no interval charged it anything
        assert got is not None
        assert got.energy_j == pytest.approx(expected.energy_j, rel=1e-9, abs=1e-12)
        assert got.method == expected.method


def test_a_crowd_with_quiet_gaps_adds_up_to_the_meter() -> None:
    # 200 requests over 3 s with two pauses; intervals cut where the busy spans end, as
    # the closer cuts them: shares + the energy with nothing in flight = the total.
    rng = random.Random(7)
    works = []
    for _ in range(200):
        s = rng.choice([rng.uniform(0.0, 0.8), rng.uniform(1.2, 2.0), rng.uniform(2.4, 2.9)])
        d = rng.uniform(0.01, 0.1)
        works.append(Work(s, s + d, [(s + d / 2, 1.0)], 5.0, s + d / 3))
    book = _book_of(works)
    points = sorted({*(k * 0.1 for k in range(31)), *(t for t in book.busy_edges if t < 3.0)})
    intervals = [Interval(a, b, 100.0 * (b - a), 30.0) for a, b in itertools.pairwise(points)]
    book.split(intervals, 3.0)
    shares = sum(s.energy_j for i in range(200) if (s := book.charged(str(i))) is not None)
    spans = sorted((w.start_s, w.end_s) for w in works)
    busy, last_end = 0.0, -1.0
    for a, b in spans:
        busy += max(0.0, b - max(a, last_end))
        last_end = max(last_end, b)
    assert shares == pytest.approx(100.0 * busy, rel=1e-9)
    assert shares < 100.0 * 3.0 * 0.95  # the pauses went to nobody


async def test_the_closer_splits_on_its_own_thread_up_to_a_finishers_end() -> None:
    sampler = Sampler([SteadyMeter(100.0, "machine")], sample_hz=50.0)
    await asyncio.to_thread(sampler.start)
    book = OverlapBook()
    closer = ShareCloser(sampler, book)
    threads: list[str] = []
    split = book.split

    def noting(intervals: list[Interval], now_s: float) -> None:
        threads.append(threading.current_thread().name)
        split(intervals, now_s)

    book.split = noting  # type: ignore[method-assign]
    try:
        async with closer.running():
            start = time.monotonic()
            for key in ("a", "b"):
                book.open(key, start, lambda now: Work(start, now, [(start + 0.01, 1.0)]))
            await asyncio.sleep(0.2)
            end = time.monotonic()
            book.close("a", end)
            await sampler.fresh_sample()
            await closer.through(end)
            share = book.charged("a")
    finally:
        sampler.close()
    assert book.split_through_s >= end
    assert threads and all(name.startswith("joulegate-shares") for name in threads)
    assert share is not None and share.concurrency_mean == pytest.approx(2.0, rel=0.05)
    assert share.energy_j == pytest.approx(100.0 * (end - start) / 2, rel=0.1)


@pytest.mark.parametrize("slots", [4, 8])
def test_the_online_book_meets_the_simulated_truth(slots: int) -> None:
    # The synthetic validation of tests/test_attribution.py, run through the book the
    # proxy runs: each interval split as it closes, with only the work known by then.
    r = simulate(slots, duration_s=20.0)
    assert quantile(r.online_errors, 0.95) <= 0.05
    assert r.online_conservation <= 0.01
