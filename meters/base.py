"""What every power meter is: a few components, each read as energy or power.

A *component* is the part of the machine a reading covers:

``gpu``      the GPUs (NVML)
``cpu``      the CPU packages (RAPL ``package-N``)
``dram``     memory (RAPL ``dram``)
``psys``     the whole SoC platform (RAPL ``psys``, laptops and some desktops)
``machine``  the whole box at the wall or the PSU (Prometheus, IPMI, smart plugs)

A meter's :meth:`Meter.read` is blocking and runs on the sampler's thread, never
on the event loop. It returns, per component, a cumulative energy counter in
joules (already unwrapped: it never goes down), an instantaneous power in
watts, or both. The sampler integrates powers and interpolates counters.

Errors: an adapter translates its vendor's errors (``pynvml.NVMLError``,
``OSError`` from sysfs, ``httpx.HTTPError``, a failed ``ipmitool``) into
:class:`~config.errors.MeterError` at its boundary. A constructor raises
:class:`~config.errors.MeterUnavailable` when the meter cannot be used, with a
message that says what to do, or its subclass :class:`~config.errors.MeterAbsent` when the
hardware simply is not there (no GPU, no RAPL), which is normal and logged
quietly::

    MeterError                a read failed (the meter is degraded, not dropped)
    └── MeterUnavailable      the meter cannot be used (permission, bad answer)
        └── MeterAbsent       the hardware is not on this machine
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from config.errors import MeterAbsent, MeterError, MeterUnavailable

__all__ = ["COMPONENTS", "Activity", "Meter", "MeterAbsent", "Reading"]

COMPONENTS = ("gpu", "cpu", "dram", "psys", "machine")
"""Every component name a meter may report, in the order they are shown."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One component's reading at one instant."""

    energy_j: float | None = None
    """Cumulative energy since the meter started, in joules (never decreases)."""
    power_w: float | None = None
    """Instantaneous (or the device's short-average) power, in watts."""
    energy_low_j: float | None = None
    """An estimate's cumulative energy with its lowest plausible coefficients (J)."""
    energy_high_j: float | None = None
    """An estimate's cumulative energy with its highest plausible coefficients (J)."""


class Meter(ABC):
    """A source of readings for one or more components."""

    name: ClassVar[str] = "meter"
    """Short name used in logs and ``x-energy-meter`` (``nvml``, ``rapl``, …)."""
    estimated: ClassVar[bool] = False
    """True when the numbers come from a model, not from a measurement."""
    estimate_model: str | None = None
    """For an estimate: which model and coefficients it uses (None for a measurement)."""
    remote: ClassVar[bool] = False
    """True for meters read over the network or a subprocess: they are polled by
    the :class:`~meters.poller.Poller` at ``meters.external_hz`` so a slow answer
    never delays the local meters, and are not re-read at window edges."""
    counter_resolution_s: ClassVar[float] = 0.0
    """How often the device updates its energy counter; windows shorter than
    this use integrated power instead and are flagged low-resolution."""
    update_period_s: float = 0.0
    """How often any of the meter's readings can change at all (the source's own
    update period); a read sooner than this after the last one shows nothing new,
    so window edges skip it. 0: every edge reads."""

    @property
    @abstractmethod
    def components(self) -> tuple[str, ...]:
        """The components this meter reports, a subset of :data:`COMPONENTS`."""

    @abstractmethod
    def read(self) -> dict[str, Reading]:
        """Read every component now (blocking); raise MeterError on failure."""

    def describe(self) -> str:
        """One line for the start-up log and ``joulegate meters``."""
        return f"{self.name}: {', '.join(self.components)}"

    @property
    def max_poll_interval_s(self) -> float:
        """Longest safe gap between reads (counters that wrap need a bound)."""
        return math.inf

    def temperatures_c(self) -> dict[str, float]:
        """Temperatures by sensor name, in °C (blocking); empty when not known."""
        return {}

    def close(self) -> None:  # noqa: B027 - an optional hook: most meters hold nothing
        """Release the meter's handles; safe to call twice."""

    def _probe(self) -> None:
        """Read once while constructing: a meter that cannot give a reading now is
        not used (closed, then :class:`~config.errors.MeterUnavailable`)."""
        try:
            self.read()
        except MeterError as exc:
            self.close()
            raise MeterUnavailable(str(exc)) from exc


class Activity:
    """When requests hold a slot: the sampler marks windows, the estimate reads it.

    Marked on the event loop and read on the sampler's thread, hence the lock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open = 0
        self._since_s = 0.0
        self._busy_s = 0.0

    def begin(self, t_s: float) -> None:
        """A window opened at ``t_s``."""
        with self._lock:
            if self._open == 0:
                self._since_s = t_s
            self._open += 1

    def end(self, t_s: float) -> None:
        """A window closed at ``t_s``."""
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self._busy_s += max(0.0, t_s - self._since_s)

    def busy_s(self) -> float:
        """Seconds so far during which at least one window was open."""
        with self._lock:
            if self._open:
                return self._busy_s + max(0.0, self._clock() - self._since_s)
            return self._busy_s
