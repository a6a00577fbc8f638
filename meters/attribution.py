"""Fair shares of the meter's energy among requests that overlap in time.

With one slot a request's window is the machine's alone. With several slots
the windows overlap and the meter cannot say who drew what, so the energy of
each *sampling interval* is shared out:

* the interval's **idle** part (idle power x length, capped at the interval's
  energy) goes to the requests active in it in proportion to the time each was
  active there: holding the machine costs the same whoever is busy;
* its **dynamic** part (the rest) goes by the *work* each request did in it:
  output tokens that arrived in the interval, plus prompt tokens spread evenly
  over the request's prefill (its start, or where the backend's timings place
  it, to its first token) at ``prefill_token_weight`` work units each, plus the
  output tokens of a whole (non-streamed) answer spread over its decode as the
  backend's timings place it (``token_share``). An interval where some active request
  reports no work events at all is split by time instead (``time_share``):
  mixing measured work with none would give the silent request nothing;
* an interval with nothing in flight is **unattributed**, and so is the idle
  power of the part of an interval no request covers.

Why: dynamic power on a batched server follows the tokens processed (each
decode step costs about the same per sequence), so tokens per interval are
the cheapest observable proxy for the marginal draw; time alone would charge a
stalled request as much as a busy one. Every joule of every interval lands in
exactly one bucket, so shares + unattributed = meter total (conservation).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

EXCLUSIVE = "exclusive"
TOKEN_SHARE = "token_share"  # noqa: S105 (a method name, not a secret)
TIME_SHARE = "time_share"


@dataclass(frozen=True, slots=True)
class Interval:
    """One sampling interval of the meter."""

    start_s: float
    end_s: float
    energy_j: float
    idle_power_w: float


@dataclass(frozen=True, slots=True)
class Work:
    """One request: its active span and the work it was seen doing."""

    start_s: float
    end_s: float
    token_events: Sequence[tuple[float, float]] = ()
    """(arrival time, output tokens) as seen in the stream, in time order."""
    prompt_tokens: float = 0.0
    first_byte_s: float | None = None
    """End of the prefill (prompt tokens are spread from ``prefill_start_s`` to here)."""
    prefill_start_s: float | None = None
    """Start of the prefill; None: ``start_s`` (the backend's timings place it later
    when the backend queued the request)."""
    decode_tokens: float = 0.0
    """Output tokens known only as a count (a whole answer with the backend's timings),
    spread evenly from ``first_byte_s`` to ``decode_end_s``."""
    decode_end_s: float | None = None

    @property
    def has_events(self) -> bool:
        """Whether any work was observed (else it can only get a time share)."""
        placed = self.first_byte_s is not None
        spread = placed and (self.prompt_tokens > 0 or self.decode_tokens > 0)
        return bool(self.token_events) or spread


@dataclass(slots=True)
class Share:
    """What one request is charged."""

    energy_j: float = 0.0
    dynamic_j: float = 0.0
    idle_j: float = 0.0
    method: str = EXCLUSIVE
    concurrency_mean: float = 1.0
    _active_s: float = field(default=0.0, repr=False)
    _crowd_s: float = field(default=0.0, repr=False)

    def add(self, idle_j: float, dynamic_j: float, time_s: float, crowd: float) -> None:
        """Add one interval's part (the request was active ``time_s`` of it)."""
        self.idle_j += idle_j
        self.dynamic_j += dynamic_j
        self._active_s += time_s
        self._crowd_s += time_s * crowd


@dataclass(slots=True)
class Attribution:
    """Every request's share and what no request was running for."""

    shares: list[Share]
    unattributed_j: float
    total_j: float


def overlap_s(a0: float, a1: float, b0: float, b1: float) -> float:
    """How long [a0, a1] and [b0, b1] overlap (0 when they do not)."""
    return max(0.0, min(a1, b1) - max(a0, b0))


def _spread(units: float, s0: float, s1: float, a: float, b: float, last: bool) -> float:
    """The part of ``units`` spread evenly over [s0, s1] that falls in [a, b)."""
    if units <= 0:
        return 0.0
    if s1 <= s0:  # all at one instant
        return units if a <= s0 < b or (last and s0 == b) else 0.0
    return units * overlap_s(s0, s1, a, b) / (s1 - s0)


class TokenEvents:
    """One request's token events as cumulative sums, so an interval's tokens are
    two bisections instead of a scan (a long stream has thousands of events)."""

    __slots__ = ("cum", "times")

    def __init__(self, events: Sequence[tuple[float, float]]) -> None:
        ordered = sorted(events)  # linear on the relay's lists, already in time order
        self.times = [t for t, _ in ordered]
        self.cum = [0.0, *itertools.accumulate(n for _, n in ordered)]

    def between(self, a: float, b: float, last: bool) -> float:
        """Tokens that arrived in [a, b) (in [a, b] for the last interval)."""
        hi = bisect.bisect_right(self.times, b) if last else bisect.bisect_left(self.times, b)
        return self.cum[hi] - self.cum[bisect.bisect_left(self.times, a)]


def spread_units(w: Work, a: float, b: float, last: bool, prefill_token_weight: float) -> float:
    """``w``'s work in [a, b) that is known as a spread, not as token events: its prompt
    over its prefill and a whole answer's output tokens over its decode."""
    fb = w.first_byte_s
    if fb is None:
        return 0.0
    p0 = min(fb, w.start_s if w.prefill_start_s is None else w.prefill_start_s)
    units = _spread(w.prompt_tokens * prefill_token_weight, p0, fb, a, b, last)
    end = w.end_s if w.decode_end_s is None else w.decode_end_s
    return units + _spread(w.decode_tokens, fb, max(fb, end), a, b, last)


@dataclass(slots=True)
class Split:
    """One interval's energy split among the requests active in it (index by work)."""

    idle_j: list[float]
    dynamic_j: list[float]
    time_s: list[float]
    crowd: float
    """Requests in flight on average over the interval."""
    by_tokens: bool
    unattributed_j: float


def divide(iv: Interval, times: Sequence[float], units: Sequence[float] | None) -> Split:
    """Share one interval among requests active ``times[i]`` seconds of it that did
    ``units[i]`` of work in it; ``units`` None when some active request showed no work
    at all (the dynamic part then goes by time too). The one place the rules live."""
    a, b, energy = iv.start_s, iv.end_s, max(0.0, iv.energy_j)
    length = b - a
    n = len(times)
    active = [i for i, o in enumerate(times) if o > 0]
    idle_parts, dynamic_parts = [0.0] * n, [0.0] * n
    if not active or length <= 0:
        return Split(idle_parts, dynamic_parts, list(times), 0.0, False, energy)
    idle = min(energy, max(0.0, iv.idle_power_w) * length)
    dynamic = energy - idle
    time_sum = sum(times[i] for i in active)
    crowd = time_sum / length
    # Idle power while nothing was in flight (part of the interval) is nobody's.
    covered = min(1.0, crowd)
    unattributed = idle * (1.0 - covered)
    idle *= covered
    unit_sum = sum(units[i] for i in active) if units is not None else 0.0
    for i in active:
        idle_parts[i] = idle * times[i] / time_sum
        if units is not None and unit_sum > 0:
            dynamic_parts[i] = dynamic * units[i] / unit_sum
        else:
            dynamic_parts[i] = dynamic * times[i] / time_sum
    return Split(idle_parts, dynamic_parts, list(times), crowd, units is not None, unattributed)


def split(
    iv: Interval,
    works: Sequence[Work],
    events: Sequence[TokenEvents],
    *,
    last: bool,
    prefill_token_weight: float,
) -> Split:
    """Share one interval (see the module docstring); ``events`` are the works' own."""
    a, b = iv.start_s, iv.end_s
    times = [overlap_s(w.start_s, w.end_s, a, b) for w in works]
    active = [i for i, o in enumerate(times) if o > 0]
    units: list[float] | None = None
    if all(works[i].has_events for i in active):
        units = [0.0] * len(works)
        for i in active:
            w = works[i]
            units[i] = events[i].between(a, b, last) + spread_units(
                w, a, b, last, prefill_token_weight
            )
    return divide(iv, times, units)


def events_of(works: Sequence[Work]) -> list[TokenEvents]:
    """Each work's token events, prepared for :func:`split`."""
    return [TokenEvents(w.token_events) for w in works]


def finish(share: Share, work: Work) -> None:
    """Total a share and name its method once every interval has been added."""
    share.energy_j = share.idle_j + share.dynamic_j
    share.concurrency_mean = share._crowd_s / share._active_s if share._active_s > 0 else 1.0
    if share.concurrency_mean <= 1.0 + 1e-9:
        share.method = EXCLUSIVE
    else:
        share.method = TOKEN_SHARE if work.has_events else TIME_SHARE


def attribute(
    intervals: Sequence[Interval], works: Sequence[Work], *, prefill_token_weight: float = 0.1
) -> Attribution:
    """Share each interval's energy among ``works`` (see the module docstring)."""
    shares = [Share() for _ in works]
    events = events_of(works)
    unattributed = 0.0
    total = 0.0
    n = len(intervals)
    for k, iv in enumerate(intervals):
        total += max(0.0, iv.energy_j)
        sp = split(iv, works, events, last=k == n - 1, prefill_token_weight=prefill_token_weight)
        unattributed += sp.unattributed_j
        for i, s in enumerate(shares):
            if sp.time_s[i] > 0:
                s.add(sp.idle_j[i], sp.dynamic_j[i], sp.time_s[i], sp.crowd)
    for s, w in zip(shares, works, strict=True):
        finish(s, w)
    return Attribution(shares, unattributed, total)
