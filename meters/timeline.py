"""One component's readings over time, and its energy between two instants.

A :class:`Track` keeps, per sample, the monotonic time and up to two
cumulative energies in joules:

``counter``     the device's own energy counter (RAPL, NVML, a J counter)
``integrated``  power readings integrated with the trapezoid rule

so the energy between any two instants is E(t1) - E(t0), with E linearly
interpolated between the samples around each instant. Past the last sample E
is extended with the last known power (a zero-order hold), which is how the
slow whole-machine meters are read between their polls.

A failed read leaves a *gap*. Integrated power cannot be trusted across a gap
(the power in between is unknown), so a window with a gap inside has no value
for that component; a hardware counter keeps counting through a gap, so only
a gap after its last good sample (no reading at the window's end) matters.

Tracks are not thread-safe; the sampler holds its lock around every call.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from meters.base import Meter, Reading

NAN = math.nan


@dataclass(frozen=True, slots=True)
class Span:
    """A component's energy over one window."""

    energy_j: float | None
    low_resolution: bool = False
    reason: str | None = None


@dataclass(slots=True)
class Track:
    """The samples of one meter's component."""

    meter: Meter
    component: str
    times: list[float] = field(default_factory=list)
    counter: list[float] = field(default_factory=list)
    integrated: list[float] = field(default_factory=list)
    power: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    """An estimate's ``energy_low_j`` counter per sample (NaN when not reported)."""
    high: list[float] = field(default_factory=list)
    """An estimate's ``energy_high_j`` counter per sample (NaN when not reported)."""
    gaps: list[float] = field(default_factory=list)
    gap_reasons: list[str] = field(default_factory=list)
    has_counter: bool = False
    has_range: bool = False
    """Some reading carried an estimate's low/high counters."""
    has_power: bool = False
    idle_power_w: float | None = None
    """Exponential average of the power while no request held a slot."""
    total_j: float = 0.0
    """Energy since the first reading, never reset or pruned (``hw.energy``):
    counter deltas where the meter has a counter, else the integrated power."""
    _bridge: bool = False

    def add(self, t: float, reading: Reading) -> None:
        """Append a good reading taken at ``t``."""
        counter = NAN if reading.energy_j is None else reading.energy_j
        power = NAN if reading.power_w is None else reading.power_w
        self.has_counter = self.has_counter or reading.energy_j is not None
        self.has_power = self.has_power or reading.power_w is not None
        if not self.times:
            integrated = 0.0
        else:
            integrated = self.integrated[-1]
            prev_p = self.power[-1]
            if not self._bridge and not math.isnan(power) and not math.isnan(prev_p):
                integrated += (prev_p + power) / 2.0 * (t - self.times[-1])
            prev_c = self.counter[-1]
            if not math.isnan(counter) and not math.isnan(prev_c):
                self.total_j += max(0.0, counter - prev_c)
            else:
                self.total_j += integrated - self.integrated[-1]
        self._bridge = False
        self.times.append(t)
        self.counter.append(counter)
        self.integrated.append(integrated)
        self.power.append(power)
        self.has_range = self.has_range or reading.energy_low_j is not None
        self.low.append(NAN if reading.energy_low_j is None else reading.energy_low_j)
        self.high.append(NAN if reading.energy_high_j is None else reading.energy_high_j)

    def add_gap(self, t: float, reason: str) -> None:
        """Record a failed read at ``t``; integration does not bridge it."""
        self.gaps.append(t)
        self.gap_reasons.append(reason)
        self._bridge = True

    def series(self) -> list[float]:
        """The preferred cumulative energy: the counter where there is one."""
        return self.counter if self.has_counter else self.integrated

    def _at(self, values: list[float], t: float, use_power: bool = True) -> float | None:
        times = self.times
        i = bisect_right(times, t)
        if i == 0:
            return None
        if i < len(times):
            t0, t1 = times[i - 1], times[i]
            e0, e1 = values[i - 1], values[i]
            if t1 <= t0:
                return e1
            return e0 + (e1 - e0) * (t - t0) / (t1 - t0)
        return values[-1] + self._last_power_w(values, use_power) * (t - times[-1])

    def _last_power_w(self, values: list[float], use_power: bool = True) -> float:
        if use_power and self.power and not math.isnan(self.power[-1]):
            return self.power[-1]
        if len(self.times) >= 2 and self.times[-1] > self.times[-2]:
            return (values[-1] - values[-2]) / (self.times[-1] - self.times[-2])
        return 0.0

    def _gap_between(self, t0: float, t1: float) -> str | None:
        i = bisect_left(self.gaps, t0)
        if i < len(self.gaps) and self.gaps[i] <= t1:
            return self.gap_reasons[i]
        return None

    def span(self, t0: float, t1: float, *, additive: bool = False) -> Span:
        """Energy between ``t0`` and ``t1`` (seconds on the sampler's clock).

        ``additive``: always the counter where there is one, so that spans laid end to
        end sum to the span over all of them (what sharing a window needs), even where
        a span too short for the counter's resolution alone would use power x time."""
        times = self.times
        if not times or times[0] > t0:
            return Span(None, reason="no reading before the window began")
        if times[-1] < t1 and self.gaps and self.gaps[-1] > times[-1]:
            return Span(None, reason=self.gap_reasons[-1])  # the end could not be read
        # Samples bracketing the window: integration across a gap there is unknown.
        lo = times[bisect_right(times, t0) - 1]
        i = bisect_right(times, t1)
        hi = times[i] if i < len(times) else t1
        power_gap = self._gap_between(lo, hi)
        if not self.has_counter:
            if power_gap is not None:
                return Span(None, reason=power_gap)
            return Span(_delta(self._at(self.integrated, t0), self._at(self.integrated, t1)))
        energy = _delta(self._at(self.counter, t0), self._at(self.counter, t1))
        resolution_s = self.meter.counter_resolution_s
        if resolution_s and not additive and (t1 - t0 < resolution_s or not energy):
            # The counter has not ticked inside the window: power x duration is closer.
            if self.has_power and power_gap is None:
                energy = _delta(self._at(self.integrated, t0), self._at(self.integrated, t1))
            return Span(energy, low_resolution=True)
        return Span(energy)

    def range_j(self, t0: float, t1: float) -> tuple[float, float] | None:
        """An estimate's (low, high) energy between ``t0`` and ``t1``, None if it has none."""
        if not self.has_range or not self.times or self.times[0] > t0:
            return None
        # Past the last sample each bound extends at its own rate, not the central power.
        low = _delta(self._at(self.low, t0, False), self._at(self.low, t1, False))
        high = _delta(self._at(self.high, t0, False), self._at(self.high, t1, False))
        return None if low is None or high is None else (low, high)

    def recent_power_w(self, since: int = 2) -> float | None:
        """Average power over the last interval (for idle tracking)."""
        if len(self.times) < since:
            return None
        values = self.series()
        dt = self.times[-1] - self.times[-2]
        if dt <= 0:
            return None
        return max(0.0, (values[-1] - values[-2]) / dt)

    def prune(self, before_s: float) -> None:
        """Forget samples and gaps older than the last sample before ``before_s``."""
        i = bisect_right(self.times, before_s) - 1
        if i > 256:
            for seq in (self.times, self.counter, self.integrated, self.power, self.low, self.high):
                del seq[:i]
        j = bisect_left(self.gaps, before_s)
        if j > 64:
            del self.gaps[:j]
            del self.gap_reasons[:j]


def _delta(e0: float | None, e1: float | None) -> float | None:
    if e0 is None or e1 is None or math.isnan(e0) or math.isnan(e1):
        return None
    return max(0.0, e1 - e0)
