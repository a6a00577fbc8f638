"""Which requests overlapped a window, and its fair share (with several slots).

:class:`OverlapBook` remembers every request in flight and those finished in
the last :data:`KEEP_S`, each as a :class:`~meters.attribution.Work` built
from its span and the token events the stream relay noted. When one finishes,
:func:`~meters.attribution.attribute` shares the sampler's interval energies
over its window among all of them. A request still in flight counts with the
work seen so far and its span up to now: its later tokens cannot change a
share already charged, which is the price of answering at the request's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from meters.attribution import Interval, Share, Work, attribute

KEEP_S = 60.0


@dataclass(slots=True)
class _Entry:
    start_s: float
    end_s: float | None
    token_events: list[tuple[float, int]]


class OverlapBook:
    """Spans and work events of recent requests, keyed by the caller's id."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def open(self, key: int, start_s: float, token_events: list[tuple[float, int]]) -> None:
        """A request began at ``start_s``; ``token_events`` is its live list."""
        self._entries[key] = _Entry(start_s, None, token_events)

    def close(self, key: int, end_s: float) -> None:
        """The request ended; forget requests that ended long before."""
        if key in self._entries:
            self._entries[key].end_s = end_s
        stale = [
            k for k, e in self._entries.items() if e.end_s is not None and e.end_s < end_s - KEEP_S
        ]
        for k in stale:
            del self._entries[k]

    def share(self, key: int, intervals: list[Interval], now_s: float) -> Share | None:
        """The share of request ``key`` of ``intervals`` (None if unknown or no intervals)."""
        mine = self._entries.get(key)
        if mine is None or not intervals:
            return None
        keys = list(self._entries)
        works = [
            Work(e.start_s, now_s if e.end_s is None else e.end_s,
                 [(t, float(n)) for t, n in e.token_events])
            for e in self._entries.values()
        ]  # fmt: skip
        return attribute(intervals, works).shares[keys.index(key)]
