"""Fair shares of overlapping windows, split online as the sampling intervals close.

:class:`OverlapBook` knows every request in flight and those finished in the last
:data:`KEEP_S`, each as a source of its :class:`~meters.attribution.Work` (its span,
the token events the stream relay notes, its prompt and the backend's timings).

Each sampling interval is split **once**, when it is closed (:meth:`OverlapBook.split`),
among the requests active in it, by :func:`~meters.attribution.divide` (the rules of
:func:`~meters.attribution.attribute`), and each request adds its part to its running
:class:`~meters.attribution.Share`. A request still in flight counts with the work seen
by then: its tokens up to the interval's end; a stream still in prefill as prefilling
until then; a whole answer's timings come only with it, so until its end the intervals
it is in go by time. What is learnt later cannot change an interval already split, and
every joule of that interval went to someone, so the shares still add up to the meters'
total. A finished request reads its total (:meth:`OverlapBook.charged`) once the
intervals up to its end are split: nothing at its end depends on how many requests ran
beside it.

Costs: a token is one append to its request's list (the relay's); an interval is
O(requests active in it), and each request's token events are counted once, by a cursor
that walks its list; opening, closing and reading a request are O(1).

The book notes where *busy spans* begin and end (:attr:`OverlapBook.busy_edges`: the
first request admitted while none was in flight, the last one to finish): cutting the
intervals there keeps time with nothing in flight (the sampler's unattributed energy)
out of every interval someone is charged for.

:meth:`OverlapBook.split` may run on a worker thread while the event loop opens and
closes requests (single dict operations); only one thread splits at a time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meters.attribution import Interval, Share, Work, divide, finish, overlap_s, spread_units

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
    share: Share = field(default_factory=Share)
    """The parts of the intervals split so far."""
    counted: int = 0
    """Token events already counted in a split interval."""
    unmeasured: bool = False
    """Some interval of its window could not be measured: it has no share."""
    prefilled: float = 0.0
    """Prompt work units given to intervals split before its first token."""
    timed: bool = False
    """Its prefill's speed has been learnt from."""

    def work(self, now_s: float) -> Work:
        final = self.final
        if final is not None:
            return final
        source = self.source  # read once: the loop may let it go meanwhile
        if source is None:
            return self.final or Work(self.start_s, now_s)
        return source(now_s)


class OverlapBook:
    """Spans, work and running shares of recent requests, keyed by request id."""

    def __init__(self, *, prefill_token_weight: float = 0.1) -> None:
        self._entries: dict[str, _Entry] = {}
        self._live: dict[str, _Entry] = {}
        """The entries an interval not split yet may concern (in flight, or ended after
        :attr:`split_through_s`)."""
        self._ended: deque[tuple[float, str]] = deque()
        self._settling: deque[tuple[str, _Entry]] = deque()
        """Ended entries still in :attr:`_live`, in the order they ended."""
        self._in_flight = 0
        self._weight = prefill_token_weight
        self._prefill_tps: float | None = None
        """The backend's prefill speed (prompt tokens a second), learnt from streams."""
        self.split_through_s = -math.inf
        """Every interval up to here has been split."""
        self.busy_edges: list[float] = []
        """Where a busy span began or ended, after :attr:`split_through_s` (see the
        module docstring); :meth:`forget_edges` drops those already passed."""

    def open(self, key: str, start_s: float, source: WorkSource) -> None:
        """A request began at ``start_s``; ``source`` tells its work when asked."""
        self._entries[key] = self._live[key] = _Entry(start_s, None, source)
        if self._in_flight == 0:
            self.busy_edges.append(start_s)
        self._in_flight += 1

    def close(self, key: str, end_s: float) -> None:
        """The request ended; forget requests that ended long before (O(1) amortised)."""
        entry = self._entries.get(key)
        if entry is not None and entry.final is None:
            entry.final = entry.work(end_s)
            entry.end_s = end_s  # after its final work: a split that sees the end sees both
            entry.source = None
            self._in_flight -= 1
            if self._in_flight == 0:
                self.busy_edges.append(end_s)
            self._ended.append((end_s, key))
            self._settling.append((key, entry))
        horizon = end_s - KEEP_S
        while self._ended and self._ended[0][0] < horizon:
            _, old = self._ended.popleft()
            self._entries.pop(old, None)
            self._live.pop(old, None)

    def edges(self, start_s: float, end_s: float) -> list[float]:
        """Window edges of the known requests inside (start_s, end_s) (O(requests
        known): for callers that cut intervals at every window edge themselves)."""
        out = []
        for e in self._entries.values():
            for t in (e.start_s, e.end_s):
                if t is not None and start_s < t < end_s:
                    out.append(t)
        return out

    def forget_edges(self, before_s: float) -> None:
        """Drop the busy edges at or before ``before_s`` (the loop's side of a split)."""
        if self.busy_edges and self.busy_edges[0] <= before_s:
            self.busy_edges = [t for t in self.busy_edges if t > before_s]

    def next_start_s(self) -> float | None:
        """Where the next split begins: :attr:`split_through_s`, or the earliest
        request in the book when that is later; None when no request is."""
        starts = [e.start_s for e in self._snapshot()]
        return max(self.split_through_s, min(starts)) if starts else None

    def skip_to(self, point_s: float) -> None:
        """Nothing up to ``point_s`` can be measured: the requests in it get no share."""
        for e in self._snapshot():
            if e.start_s < point_s:
                e.unmeasured = True
        self.split_through_s = max(self.split_through_s, point_s)
        self._let_go_through(point_s)

    def split(self, intervals: Sequence[Interval], now_s: float) -> None:
        """Split each of ``intervals`` (in time order, end to end) that ends after
        :attr:`split_through_s` among the requests active in it, their work as known
        at ``now_s``, and add each one's part to its share."""
        todo = [iv for iv in intervals if iv.end_s > self.split_through_s]
        if not todo:
            return
        first, last = max(todo[0].start_s, self.split_through_s), todo[-1].end_s
        members: list[tuple[_Entry, Work]] = []
        for e in self._snapshot():
            end = e.end_s
            if e.start_s < last and (end is None or end > first):
                w = e.work(now_s if end is None else end)
                members.append((e, w))
                if not e.timed and w.token_events:
                    self._learn_prefill(e, w)
        for iv in todo:
            self._split_one(_clipped(iv, self.split_through_s), members)
            self.split_through_s = iv.end_s
        self._let_go_through(last)

    def _split_one(self, iv: Interval, members: list[tuple[_Entry, Work]]) -> None:
        a, b = iv.start_s, iv.end_s
        times = [overlap_s(w.start_s, w.end_s, a, b) for _, w in members]
        tokens = [_count(e, w, b) for e, w in members]  # every cursor moves past b
        active = [i for i, t in enumerate(times) if t > 0]
        units: list[float] | None = None
        if all(members[i][1].has_events for i in active):
            units = tokens
            tps = self._prefill_tps
            for i in active:
                e, w = members[i]
                if e.end_s is None and not w.token_events and tps is not None:
                    units[i] += self._prefilling(e, w, a, b, tps)
                else:
                    units[i] += spread_units(w, a, b, w.end_s <= b, self._weight)
        sp = divide(iv, times, units)
        for i in active:
            members[i][0].share.add(sp.idle_j[i], sp.dynamic_j[i], times[i], sp.crowd)

    def _learn_prefill(self, e: _Entry, w: Work) -> None:
        """Note how fast ``w``'s prompt went, now that its first token came."""
        e.timed = True
        fb = w.token_events[0][0]
        p0 = w.start_s if w.prefill_start_s is None else w.prefill_start_s
        if w.prompt_tokens > 0 and fb > p0:
            tps = w.prompt_tokens / (fb - p0)
            old = self._prefill_tps
            self._prefill_tps = tps if old is None else old + 0.2 * (tps - old)

    def _prefilling(self, e: _Entry, w: Work, a: float, b: float, tps: float) -> float:
        """The prompt work of a stream still in prefill in [a, b): the end of its prefill
        is not known yet, so at the backend's prefill speed ``tps`` (prompt tokens a
        second), never more than its prompt."""
        p0 = w.start_s if w.prefill_start_s is None else w.prefill_start_s
        speed = tps * self._weight
        units = min(w.prompt_tokens * self._weight - e.prefilled, speed * overlap_s(p0, b, a, b))
        units = max(0.0, units)
        e.prefilled += units
        return units

    def _let_go_through(self, point_s: float) -> None:
        """Entries that ended by ``point_s`` are wholly split: total their shares and let
        their work go (a minute of finished requests at 512 streams is 15,000 of them).
        O(entries let go): they are taken in the order they closed, up to the first that
        ended after ``point_s`` (one closed out of order waits for a later split; until
        then no split counts it, as it ended before the split began)."""
        settling = self._settling
        while settling and (settling[0][1].end_s or math.inf) <= point_s:
            key, e = settling.popleft()
            self._live.pop(key, None)  # the loop may have forgotten it meanwhile
            final = e.final
            if final is not None:
                finish(e.share, final)
                e.final = None

    def _snapshot(self) -> list[_Entry]:
        """The live entries now (for the splitting thread). ``dict.copy`` is one step
        under the GIL; ``list(d.values())`` is not (an allocation on the way may run a
        collection, whose finalizers let the loop in): at 512 streams, with the loop
        opening and closing requests meanwhile, it raised "dictionary changed size"."""
        return list(self._live.copy().values())

    def charged(self, key: str) -> Share | None:
        """``key``'s share of the intervals split so far, totalled; None if the book
        does not know it or none of its intervals could be measured."""
        e = self._entries.get(key)
        if e is None or e.unmeasured or e.share._active_s <= 0:
            return None
        if e.final is not None or e.source is not None:  # not wholly split yet
            finish(e.share, e.work(self.split_through_s))
        return e.share

    def share(self, key: str, intervals: list[Interval], now_s: float) -> Share | None:
        """Split ``intervals`` (those not split yet) and charge ``key`` its share (None
        if unknown or no intervals): what the meter stage does off the loop, in one call."""
        if key not in self._entries or not intervals:
            return None
        self.split(intervals, now_s)
        return self.charged(key)


def _clipped(iv: Interval, from_s: float) -> Interval:
    """``iv`` from ``from_s`` on (its energy pro rata), when it began before."""
    if iv.start_s >= from_s:
        return iv
    part = (iv.end_s - from_s) / (iv.end_s - iv.start_s)
    return Interval(from_s, iv.end_s, iv.energy_j * part, iv.idle_power_w)


def _count(e: _Entry, w: Work, b: float) -> float:
    """Tokens of ``w`` not counted yet that arrived before ``b`` (all of them once the
    request ended by ``b``); moves its cursor past them. The events are in time order,
    as the relay notes them."""
    events = w.token_events
    k, stop, got = e.counted, len(events), 0.0
    end = e.end_s
    if end is None or end > b:
        while k < stop and events[k][0] < b:
            got += events[k][1]
            k += 1
    else:
        while k < stop:
            got += events[k][1]
            k += 1
    e.counted = k
    return got
