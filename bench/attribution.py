"""Benchmark of per-request energy attribution against a simulated ground truth.

A virtual clock steps at 1 ms; ``slots`` closed-loop clients each run
requests back to back (prefill, then decode at their own token period). The
power model is linear: idle power plus, per request, a prefill power while it
prefills and ``decode_j_per_token`` / period while it decodes, so each
request's exact dynamic energy is known; its exact idle part is the idle
power split by time among the active requests (the same convention the
attribution uses). The meter is a cumulative counter read at 10 Hz.

The linear truth is also met by the online book the proxy runs
(:class:`~meters.sharing.OverlapBook`): each interval split as it closes, with the work
known by then (tokens so far; a request still in prefill counted as prefilling until
then), requests opened and closed as they begin and end.

The second truth is a concave batched-decode curve, dynamic power
``p1 * n ** 0.7`` for ``n`` requests busy: in each step every busy request is
a symmetric player, so its Shapley value is an equal split of that step's
power. The Shapley gap is reported, not asserted.

Run with ``python -m bench.attribution`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import functools
import random
import statistics
from dataclasses import dataclass

from meters.attribution import Interval, Work, attribute
from meters.sharing import OverlapBook

STEP_S = 0.001
SAMPLE_S = 0.1
IDLE_POWER_W = 60.0
PREFILL_J_PER_TOKEN = 0.002
DECODE_J_PER_TOKEN = 0.02
CONCAVE_EXPONENT = 0.7


@dataclass(slots=True)
class SimResult:
    """Errors of one simulated run."""

    errors: list[float]
    """|attributed - exact| / exact per request (linear model)."""
    conservation: float
    """|sum of shares + unattributed - meter total| / meter total."""
    shapley_gap: list[float]
    """|attributed - Shapley| / Shapley per request (concave model)."""
    online_errors: list[float]
    """As ``errors``, for the shares the online book charged."""
    online_conservation: float
    """As ``conservation``, for the online book (with the unattributed energy)."""


def _schedule(
    slots: int, duration_s: float, rng: random.Random
) -> list[tuple[float, float, int, int, float]]:
    """Requests as (start, first byte, prompt tokens, output tokens, token period)."""
    out = []
    for _ in range(slots):
        t = rng.uniform(0.0, 0.5)
        while t < duration_s:
            prompt = rng.randint(50, 1500)
            tokens = rng.randint(20, 200)
            period = rng.uniform(0.01, 0.05)
            first = t + prompt * 0.0004
            out.append((t, first, prompt, tokens, period))
            t = first + tokens * period + rng.uniform(0.0, 0.3)
    return out


def simulate(slots: int, *, seed: int = 0, duration_s: float = 20.0) -> SimResult:
    """Run ``slots`` clients for ``duration_s`` and compare shares with the truths."""
    rng = random.Random(seed)
    reqs = _schedule(slots, duration_s, rng)
    end_s = max(first + n * p for _, first, _, n, p in reqs) + 0.2
    steps = int(end_s / STEP_S) + 1
    exact = [0.0] * len(reqs)
    shapley = [0.0] * len(reqs)
    linear_j = [0.0] * (steps + 1)
    concave_j = [0.0] * (steps + 1)
    p1 = DECODE_J_PER_TOKEN / 0.03
    for k in range(steps):
        t = k * STEP_S + STEP_S / 2
        busy: list[int] = []
        dyn = [0.0] * len(reqs)
        for i, (s, first, prompt, n, period) in enumerate(reqs):
            if s <= t < first:
                dyn[i] = PREFILL_J_PER_TOKEN * prompt / (first - s)
            elif first <= t < first + n * period:
                dyn[i] = DECODE_J_PER_TOKEN / period
            else:
                continue
            busy.append(i)
        power = IDLE_POWER_W + sum(dyn)
        linear_j[k + 1] = linear_j[k] + power * STEP_S
        conc = p1 * len(busy) ** CONCAVE_EXPONENT if busy else 0.0
        concave_j[k + 1] = concave_j[k] + (IDLE_POWER_W + conc) * STEP_S
        for i in busy:
            exact[i] += (dyn[i] + IDLE_POWER_W / len(busy)) * STEP_S
            shapley[i] += (conc + IDLE_POWER_W) / len(busy) * STEP_S
    per = round(SAMPLE_S / STEP_S)
    works = [
        Work(s, first + n * p, [(first + (j + 1) * p, 1.0) for j in range(n)], prompt, first)
        for s, first, prompt, n, p in reqs
    ]
    weight = PREFILL_J_PER_TOKEN / DECODE_J_PER_TOKEN

    def intervals(cum: list[float]) -> list[Interval]:
        return [
            Interval(k * STEP_S, min(k + per, steps) * STEP_S, cum[min(k + per, steps)] - cum[k],
                     IDLE_POWER_W)
            for k in range(0, steps, per)
        ]  # fmt: skip

    lin = attribute(intervals(linear_j), works, prefill_token_weight=weight)
    con = attribute(intervals(concave_j), works, prefill_token_weight=weight)
    got = sum(s.energy_j for s in lin.shares) + lin.unattributed_j
    online = online_shares(intervals(linear_j), works, weight)
    online_got = sum(online) + lin.unattributed_j
    return SimResult(
        errors=[abs(s.energy_j - e) / e for s, e in zip(lin.shares, exact, strict=True)],
        conservation=abs(got - linear_j[steps]) / linear_j[steps],
        shapley_gap=[abs(s.energy_j - e) / e for s, e in zip(con.shares, shapley, strict=True)],
        online_errors=[abs(s - e) / e for s, e in zip(online, exact, strict=True)],
        online_conservation=abs(online_got - linear_j[steps]) / linear_j[steps],
    )


def _known(w: Work, now_s: float) -> Work:
    """``w`` as the proxy knows it at ``now_s``: the tokens so far, and a stream still in
    prefill counted as prefilling until now."""
    events = [e for e in w.token_events if e[0] <= now_s]
    first = w.first_byte_s if w.first_byte_s is not None and w.first_byte_s <= now_s else now_s
    return Work(w.start_s, now_s, events, w.prompt_tokens, first)


def online_shares(intervals: list[Interval], works: list[Work], weight: float) -> list[float]:
    """Each request's share from the online book, each interval split as it closes."""
    book = OverlapBook(prefill_token_weight=weight)
    steps = sorted([(w.start_s, 1, i) for i, w in enumerate(works)]
                   + [(w.end_s, 0, i) for i, w in enumerate(works)])  # fmt: skip
    k = 0
    for iv in intervals:
        while k < len(steps) and steps[k][0] <= iv.end_s:
            t, opening, i = steps[k]
            if opening:
                book.open(str(i), t, functools.partial(_known, works[i]))
            else:
                book.close(str(i), t)
            k += 1
        book.split([iv], iv.end_s)
    return [s.energy_j if (s := book.charged(str(i))) is not None else 0.0
            for i in range(len(works))]  # fmt: skip


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    """Print concurrency x p50/p95 error x conservation x Shapley gap."""
    print("attribution vs simulated truth (10 Hz meter, linear model; concave for Shapley)")
    print("(online: the book the proxy runs, each interval split as it closes)")
    print(f"{'slots':>5} {'requests':>8} {'p50 err':>8} {'p95 err':>8} {'conserv':>9} "
          f"{'shapley p50':>11} {'shapley p95':>11} {'online p50':>10} {'online p95':>10} "
          f"{'online cons':>11}")  # fmt: skip
    for slots in (1, 2, 4, 8):
        r = simulate(slots, duration_s=10.0)
        print(f"{slots:>5} {len(r.errors):>8} {quantile(r.errors, 0.5):>8.2%} "
              f"{quantile(r.errors, 0.95):>8.2%} {r.conservation:>9.2e} "
              f"{statistics.median(r.shapley_gap):>11.2%} "
              f"{quantile(r.shapley_gap, 0.95):>11.2%} "
              f"{quantile(r.online_errors, 0.5):>10.2%} "
              f"{quantile(r.online_errors, 0.95):>10.2%} "
              f"{r.online_conservation:>11.2e}")  # fmt: skip


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
