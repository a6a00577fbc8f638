"""The meters' energy while no request was in flight, counted as the sampler ticks.

Every request is charged the energy of its own window (or its share of the windows it
overlapped, :mod:`meters.sharing`); what the meters measured outside every window (the
machine idling between requests) belongs to none of them. Over any run, the requests'
energies plus this figure are the meters' total, which is how an operator checks the
attribution adds up (``joulegate_unattributed_energy_joules_total`` beside the sum of
``joulegate_energy_joules_total{component="total"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Unattributed:
    """The energy of the parts of each sampling interval no window covered."""

    def __init__(self) -> None:
        self.energy_j = 0.0
        """Joules measured with no request in flight, since the first tick."""
        self.unknown_s = 0.0
        """Uncovered seconds whose energy the meters could not tell (a failed read)."""
        self._last_tick_s: float | None = None
        self._closed: list[tuple[float, float]] = []

    def closed(self, start_s: float, end_s: float) -> None:
        """A window ran from ``start_s`` to ``end_s``."""
        if self._last_tick_s is not None and end_s > self._last_tick_s:
            self._closed.append((start_s, end_s))

    def tick(
        self,
        t_s: float,
        open_since_s: Iterable[float],
        measure_j: Callable[[float, float], float | None],
    ) -> None:
        """The sampler read at ``t_s``; windows still open began at ``open_since_s``.
        Add the energy of what no window covered since the last tick."""
        prev, self._last_tick_s = self._last_tick_s, t_s
        if prev is None or t_s <= prev:
            self._closed.clear()
            return
        spans = [(max(a, prev), min(b, t_s)) for a, b in self._closed]
        spans += [(max(a, prev), t_s) for a in open_since_s]
        self._closed = [(a, b) for a, b in self._closed if b > t_s]  # ended after the read
        cursor = prev
        for a, b in sorted(s for s in spans if s[0] < s[1]):
            if a > cursor:
                self._add(cursor, a, measure_j)
            cursor = max(cursor, b)
        if cursor < t_s:
            self._add(cursor, t_s, measure_j)

    def _add(self, a: float, b: float, measure_j: Callable[[float, float], float | None]) -> None:
        energy_j = measure_j(a, b)
        if energy_j is None:
            self.unknown_s += b - a
        else:
            self.energy_j += energy_j
