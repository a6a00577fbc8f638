"""Fair shares of the meter's energy among requests that overlap in time.

With one slot a request's window is the machine's alone. With several slots
the windows overlap and the meter cannot say who drew what, so the energy of
each *sampling interval* is shared out:

* the interval's **idle** part (idle power x length, capped at the interval's
  energy) goes to the requests active in it in proportion to the time each was
  active there: holding the machine costs the same whoever is busy;
* its **dynamic** part (the rest) goes by the *work* each request did in it:
  output tokens that arrived in the interval, plus prompt tokens spread evenly
  over the request's prefill (start to first byte) at ``prefill_token_weight``
  work units each (``token_share``). An interval where some active request
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
    """(arrival time, output tokens) as seen in the stream."""
    prompt_tokens: float = 0.0
    first_byte_s: float | None = None
    """End of the prefill (prompt tokens are spread from ``start_s`` to here)."""

    @property
    def has_events(self) -> bool:
        """Whether any work was observed (else it can only get a time share)."""
        return bool(self.token_events) or (self.prompt_tokens > 0 and self.first_byte_s is not None)


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


@dataclass(slots=True)
class Attribution:
    """Every request's share and what no request was running for."""

    shares: list[Share]
    unattributed_j: float
    total_j: float


def _overlap_s(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _work_in(w: Work, a: float, b: float, last: bool, prefill_token_weight: float) -> float:
    units = 0.0
    for t, tokens in w.token_events:
        if a <= t < b or (last and t == b):
            units += tokens
    if w.prompt_tokens > 0 and w.first_byte_s is not None:
        length = w.first_byte_s - w.start_s
        if length <= 0:
            if a <= w.start_s < b or (last and w.start_s == b):
                units += w.prompt_tokens * prefill_token_weight
        else:
            frac = _overlap_s(w.start_s, w.first_byte_s, a, b) / length
            units += w.prompt_tokens * prefill_token_weight * frac
    return units


def attribute(
    intervals: Sequence[Interval], works: Sequence[Work], *, prefill_token_weight: float = 0.1
) -> Attribution:
    """Share each interval's energy among ``works`` (see the module docstring)."""
    shares = [Share() for _ in works]
    unattributed = 0.0
    total = 0.0
    n = len(intervals)
    for k, iv in enumerate(intervals):
        a, b, energy = iv.start_s, iv.end_s, max(0.0, iv.energy_j)
        total += energy
        length = b - a
        times = [_overlap_s(w.start_s, w.end_s, a, b) for w in works]
        active = [i for i, o in enumerate(times) if o > 0]
        if not active or length <= 0:
            unattributed += energy
            continue
        idle = min(energy, max(0.0, iv.idle_power_w) * length)
        dynamic = energy - idle
        time_sum = sum(times[i] for i in active)
        crowd = time_sum / length
        # Idle power while nothing was in flight (part of the interval) is nobody's.
        covered = min(1.0, crowd)
        unattributed += idle * (1.0 - covered)
        idle *= covered
        by_tokens = all(works[i].has_events for i in active)
        units = [0.0] * len(works)
        if by_tokens:
            last = k == n - 1
            for i in active:
                units[i] = _work_in(works[i], a, b, last, prefill_token_weight)
        unit_sum = sum(units[i] for i in active)
        for i in active:
            s = shares[i]
            s.idle_j += idle * times[i] / time_sum
            if by_tokens and unit_sum > 0:
                s.dynamic_j += dynamic * units[i] / unit_sum
            else:
                s.dynamic_j += dynamic * times[i] / time_sum
            s._active_s += times[i]
            s._crowd_s += times[i] * crowd
    for s, w in zip(shares, works, strict=True):
        s.energy_j = s.idle_j + s.dynamic_j
        s.concurrency_mean = s._crowd_s / s._active_s if s._active_s > 0 else 1.0
        if s.concurrency_mean <= 1.0 + 1e-9:
            s.method = EXCLUSIVE
        else:
            s.method = TOKEN_SHARE if w.has_events else TIME_SHARE
    return Attribution(shares, unattributed, total)
