"""Which requests overlapped a window, and its fair share (with several slots).

:class:`OverlapBook` remembers every request in flight and those finished in
the last :data:`KEEP_S`, each as a source of its :class:`~meters.attribution.Work`
(its span, the token events the stream relay noted, its prompt and the
backend's timings). When one finishes, :func:`~meters.attribution.split`
shares each sampling interval of its window among all of them.

A request still in flight counts with the work seen so far: its later tokens
cannot change a share already charged, which is the price of answering at the
request's end. So that the shares still add up, the book *settles* each
interval: what earlier finishers took of it is remembered, a later one shares
only the rest among the requests that have not been charged for it yet, and the
last of them takes all that is left. With complete knowledge this is exactly
:func:`~meters.attribution.attribute`; with partial knowledge the error moves
to the last finisher instead of leaking out of (or into) the meter's total.
Intervals are cut at every window edge the book knows (:meth:`OverlapBook.edges`),
so every request sees the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meters.attribution import Interval, Share, Work, events_of, finish, split

KEEP_S = 60.0

WorkSource = Callable[[float], Work]
"""The request's work as known at the given instant (its end, or now while in flight)."""


@dataclass(slots=True)
class _Entry:
    start_s: float
    end_s: float | None
    source: WorkSource | None
    """Asked while the request is in flight; let go at its end (it holds the exchange)."""
    final: Work | None = None
    """The work at the end."""

    def work(self, now_s: float) -> Work:
        if self.final is not None:
            return self.final
        return self.source(now_s) if self.source is not None else Work(self.start_s, now_s)


@dataclass(slots=True)
class _Settled:
    """What the requests charged so far took of one interval."""

    idle_j: float = 0.0
    dynamic_j: float = 0.0
    by: set[str] = field(default_factory=set)


class OverlapBook:
    """Spans and work of recent requests, keyed by request id, and what each
    interval has already been charged for."""

    def __init__(self, *, prefill_token_weight: float = 0.1) -> None:
        self._entries: dict[str, _Entry] = {}
        self._settled: dict[tuple[float, float], _Settled] = {}
        self._weight = prefill_token_weight

    def open(self, key: str, start_s: float, source: WorkSource) -> None:
        """A request began at ``start_s``; ``source`` tells its work when asked."""
        self._entries[key] = _Entry(start_s, None, source)

    def close(self, key: str, end_s: float) -> None:
        """The request ended; forget requests (and intervals) that ended long before."""
        entry = self._entries.get(key)
        if entry is not None and entry.final is None:
            entry.end_s = end_s
            entry.final = entry.work(end_s)
            entry.source = None
        horizon = end_s - KEEP_S
        for k in [k for k, e in self._entries.items() if e.end_s is not None and e.end_s < horizon]:
            del self._entries[k]
        for iv in [iv for iv in self._settled if iv[1] < horizon]:
            del self._settled[iv]

    def edges(self, start_s: float, end_s: float) -> list[float]:
        """Window edges of the known requests inside (start_s, end_s): where to cut
        the intervals so that every request shares the same ones."""
        out = []
        for e in self._entries.values():
            for t in (e.start_s, e.end_s):
                if t is not None and start_s < t < end_s:
                    out.append(t)
        return out

    def share(self, key: str, intervals: list[Interval], now_s: float) -> Share | None:
        """Charge request ``key`` its share of ``intervals`` (None if unknown or no
        intervals). Call it once per request: it settles its part of each interval."""
        if key not in self._entries or not intervals:
            return None
        a, b = intervals[0].start_s, intervals[-1].end_s
        keys = [
            k for k, e in self._entries.items()
            if k == key or (e.start_s < b and (e.end_s is None or e.end_s > a))
        ]  # fmt: skip
        works = [self._entries[k].work(now_s) for k in keys]
        events = events_of(works)
        me = keys.index(key)
        share = Share()
        n = len(intervals)
        for k, iv in enumerate(intervals):
            sp = split(iv, works, events, last=k == n - 1, prefill_token_weight=self._weight)
            if sp.time_s[me] <= 0:
                continue
            settled = self._settled.setdefault((iv.start_s, iv.end_s), _Settled())
            active = [i for i, t in enumerate(sp.time_s) if t > 0]
            unsettled = [i for i in active if keys[i] not in settled.by or i == me]
            idle_left = max(0.0, sum(sp.idle_j[i] for i in active) - settled.idle_j)
            dynamic_left = max(0.0, sum(sp.dynamic_j[i] for i in active) - settled.dynamic_j)
            if unsettled == [me]:  # the last one charged for it takes what is left
                idle_j, dynamic_j = idle_left, dynamic_left
            else:
                idle_j = _part(idle_left, sp.idle_j, unsettled, me)
                dynamic_j = _part(dynamic_left, sp.dynamic_j, unsettled, me)
            settled.idle_j += idle_j
            settled.dynamic_j += dynamic_j
            settled.by.add(key)
            share.add(idle_j, dynamic_j, sp.time_s[me], sp.crowd)
        finish(share, works[me])
        return share


def _part(left: float, parts: list[float], among: list[int], me: int) -> float:
    """``me``'s part of ``left`` in proportion to ``parts`` over ``among``."""
    total = sum(parts[i] for i in among)
    return left * parts[me] / total if total > 0 else 0.0
