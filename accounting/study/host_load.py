"""How busy this machine's CPUs were while the study sent nothing: a busy-machine check
that works with every meter.

The estimate meter lets the study place its idle baseline between the machine's idle
floor and full load; a measured meter (RAPL, NVML, a wall meter) gives no such scale. So
before each model's first counted request, with nothing in flight, the harness reads the
machine's busy CPU time from ``/proc/stat`` over :data:`PROBE_S`. That is only this
machine's load, so it is read only when joulegate (and so, in the demo, the model) runs
here: a loopback ``--url`` or the demo the study starts itself.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meters.estimate import parse_stat

PROBE_S = 2.0
"""How long the probe watches the idle machine."""
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True, slots=True)
class CpuLoad:
    """What the study awaits before a model's counted requests: the share of all CPUs'
    time that was busy (0 to 1) over ``seconds``, or None when it cannot tell."""

    seconds: float

    async def __call__(self) -> float | None:
        return await asyncio.to_thread(cpu_busy_share, self.seconds)


def read_stat(path: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, all) jiffies of all CPUs so far, or None where there is no ``/proc/stat``."""
    try:
        return parse_stat(path.read_text(encoding="ascii"))[0]
    except OSError:
        return None


def cpu_busy_share(
    duration_s: float = PROBE_S,
    read: Callable[[], tuple[int, int] | None] = read_stat,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """The share of all CPUs' time that was busy over the next ``duration_s`` (blocking:
    run it in a thread)."""
    before = read()
    sleep(duration_s)
    after = read()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return max(0.0, min(1.0, (after[0] - before[0]) / (after[1] - before[1])))


def cpu_load_for(url: str, probe_s: float = PROBE_S) -> CpuLoad | None:
    """A probe over ``probe_s`` when joulegate at ``url`` runs on this machine, else None
    (another host's load cannot be read from here; 0 s turns the probe off)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if probe_s <= 0 or not (host in LOOPBACK_HOSTS or host.startswith("127.")):
        return None
    return CpuLoad(probe_s)
