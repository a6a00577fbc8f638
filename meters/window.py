"""A window's energy: what one request cost, whole and by component.

:class:`TrackSet` holds the sampler's tracks (one per component) and adds a
window's energy up from them: each track is interpolated at both edges (see
:mod:`meters.timeline`), a component's *dynamic* energy is its total minus its
idle power x duration (never below zero), and an estimate's low/high range is
carried through the sum.

The total for a window never counts a part twice: the ``machine`` meter when
there is one (it includes everything), else ``psys`` (the platform) plus
``gpu``, else ``cpu`` + ``dram`` + ``gpu`` (:func:`total_components`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meters.attribution import Interval
from meters.base import COMPONENTS
from meters.timeline import Track
from proxy.figures import ComponentEnergy, WindowEnergy

__all__ = ["ComponentEnergy", "TrackSet", "WindowEnergy", "WindowToken", "total_components"]


def total_components(present: Sequence[str]) -> tuple[str, ...]:
    """Which components add up to the whole without counting a part twice."""
    if "machine" in present:
        return ("machine",)
    base = ("psys",) if "psys" in present else tuple(c for c in ("cpu", "dram") if c in present)
    return base + (("gpu",) if "gpu" in present else ())


@dataclass(slots=True)
class WindowToken:
    """An open window (returned by :meth:`~meters.sampler.Sampler.open_window`; its
    bookkeeping is :class:`~meters.windows.OpenWindows`')."""

    start_s: float
    serial: int = 0
    """How many windows had been opened, this one included, when it opened."""
    alone: bool = True
    """No other window was open when it opened."""
    closed: bool = False
    exclusive: bool = True
    """No other window overlapped it (settled when it closes)."""


@dataclass(frozen=True, slots=True)
class TrackSet:
    """The components a sampler measures, one track each, and how they add up."""

    tracks: dict[str, Track]
    """One track per component, in :data:`~meters.base.COMPONENTS` order."""
    total: frozenset[str]
    """The components whose sum is the whole (:func:`total_components`)."""
    label: str
    """The meters used, joined with ``+`` (``nvml+rapl``; ``none`` without any)."""
    estimated: bool
    """Whether any component comes from a model rather than a measurement."""
    estimate_model: str | None
    """The estimate models in use, joined with ``; `` (None when all is measured)."""

    @classmethod
    def of(cls, tracks: Mapping[str, Track]) -> TrackSet:
        """The set of ``tracks`` (one per component, in any order)."""
        ordered = {c: tracks[c] for c in COMPONENTS if c in tracks}
        models = [t.meter.estimate_model for t in ordered.values() if t.meter.estimate_model]
        return cls(
            tracks=ordered,
            total=frozenset(total_components(tuple(ordered))),
            label="+".join(dict.fromkeys(t.meter.name for t in ordered.values())) or "none",
            estimated=any(t.meter.estimated for t in ordered.values()),
            estimate_model="; ".join(dict.fromkeys(models)) or None,
        )

    def measure(
        self, start_s: float, end_s: float, *, exclusive: bool, additive: bool = False
    ) -> WindowEnergy:
        """The energy from ``start_s`` to ``end_s``; ``exclusive``: no other window
        overlapped it; ``additive``: see :meth:`~meters.timeline.Track.span`. Tracks
        are not thread-safe: the caller holds the sampler's lock."""
        duration_s = end_s - start_s if end_s > start_s else 0.0
        parts: dict[str, ComponentEnergy] = {}
        energy: float | None = 0.0
        idle_w: float | None = 0.0
        low_res = False
        missing: list[str] = []
        low: float = 0.0
        high: float = 0.0
        ranged = False
        for c, track in self.tracks.items():
            span = track.span(start_s, end_s, additive=additive)
            e, idle = span.energy_j, track.idle_power_w
            dynamic = None
            if e is not None and idle is not None:
                dynamic = max(0.0, e - idle * duration_s)
            meter = track.meter
            parts[c] = ComponentEnergy(c, meter.name, e, dynamic, idle, meter.estimated,
                                       span.low_resolution, span.reason)  # fmt: skip
            bounds = track.range_j(start_s, end_s) if e is not None else None
            if bounds is not None:
                parts[c].energy_low_j, parts[c].energy_high_j = bounds
            low_res = low_res or span.low_resolution
            if c in self.total:
                if e is None:
                    missing.append(f"{c}: {span.reason}")
                elif energy is not None:
                    energy += e
                    ranged = ranged or bounds is not None
                    low += e if bounds is None else bounds[0]
                    high += e if bounds is None else bounds[1]
                idle_w = None if idle is None or idle_w is None else idle_w + idle
        reason = "; ".join(missing) if missing else None
        if not self.total:
            energy, idle_w, reason = None, None, "no meter"
        elif missing:
            energy = None
        dynamic_j = None
        if energy is not None and idle_w is not None:
            dynamic_j = max(0.0, energy - idle_w * duration_s)
        has_range = ranged and energy is not None
        return WindowEnergy(start_s, end_s, parts, energy, dynamic_j, idle_w, self.label,
                            self.estimated, low_res, exclusive, reason,
                            low if has_range else None, high if has_range else None,
                            self.estimate_model)  # fmt: skip

    def intervals(self, start_s: float, end_s: float, cuts: Iterable[float]) -> list[Interval]:
        """The whole machine's energy per sampling interval from ``start_s`` to ``end_s``
        (for sharing overlapping windows), also cut at ``cuts`` (busy spans' edges);
        empty when it is not measured. The caller holds the sampler's lock."""
        total = [t for c, t in self.tracks.items() if c in self.total]
        inner = [x for x in cuts if start_s < x < end_s]
        points = sorted({start_s, end_s, *inner, *(x for t in total for x in t.times
                                                   if start_s < x < end_s)})  # fmt: skip
        out = []
        for a, b in itertools.pairwise(points):
            e = self.measure(a, b, exclusive=False, additive=True)
            if e.energy_j is None or e.idle_power_w is None:
                return []
            out.append(Interval(a, b, e.energy_j, e.idle_power_w))
        return out
