"""What the Live page shows of each machine, and of the gateway as a whole.

One :func:`machine_view` per configured machine (``local`` alone without
``[[machines]]``), in the configured order, and one :func:`gateway_view` that adds
them up. The figures come from what joulegate already holds:

* the machine's gate (read on the event loop, which owns it): requests in flight and
  queued, its capacity, and why it admits nothing (a thermal pause, a cool-down);
* its meters' sampler (read in a worker thread by :func:`read_meters`, so the event
  loop never waits for the sampler's lock): power per component over the last
  second, energy since start-up, the unattributed part, the meters in use and
  those failing;
* the ledger's rows of this host since start-up, per machine
  (:class:`~proxy.console.state.SinceStart`): the attributed energy's idle and
  dynamic parts;
* its backends' last known health and models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meters import Sampler
from proxy.console.playground import total_power_w
from proxy.console.state import Recorded
from proxy.context import PowerReadings
from proxy.gate import COOLDOWN, THERMAL
from proxy.machines import Machine

ENERGY_KEYS = ("total_j", "attributed_j", "attributed_idle_j", "attributed_dynamic_j",
               "unattributed_j", "unsettled_j")  # fmt: skip
"""The energy figures of a machine, and of the gateway (their sums)."""


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """One machine's meters as its sampler holds them now."""

    power_w: dict[str, float | None]
    """Average power of each component over the last second."""
    energy_j: dict[str, float | None]
    """Each component's energy since start-up."""
    unattributed_j: float
    """Energy measured while none of the machine's requests was in flight."""
    label: str | None = None
    """The meters in use (``prometheus``, ``nvml+rapl``); None from a stand-in."""
    estimated: bool = False
    """Whether a component comes from a model rather than a measurement."""
    failing: dict[str, str] = field(default_factory=dict)
    """Meters whose last read failed, with the reason."""


def read_meters(readings: PowerReadings) -> MeterSnapshot:
    """A machine's meters now (takes the sampler's lock: call it off the event loop)."""
    rows = readings.device_readings()
    power = {str(r["id"]): _number(r.get("power_w")) for r in rows}
    energy = {str(r["id"]): _number(r.get("energy_j")) for r in rows}
    if isinstance(readings, Sampler):
        return MeterSnapshot(power, energy, readings.unattributed_j, readings.label or None,
                             readings.estimated, readings.failing())  # fmt: skip
    return MeterSnapshot(power, energy, readings.unattributed_j)


async def read_all_meters(by_machine: Mapping[str, PowerReadings]) -> dict[str, MeterSnapshot]:
    """Every machine's :func:`read_meters`, in one worker thread (one hop per poll)."""
    machines = list(by_machine.items())  # copied on the loop, which owns the mapping
    if not machines:
        return {}
    return await asyncio.to_thread(lambda: {name: read_meters(r) for name, r in machines})


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def machine_state(machine: Machine) -> str:
    """``thermal`` (paused until it cools), ``cooldown`` (resting), ``busy`` or ``idle``."""
    gate = machine.gate
    if gate.paused_for(THERMAL):
        return "thermal"
    if gate.paused_for(COOLDOWN) or machine.resting:
        return "cooldown"
    return "busy" if gate.in_flight else "idle"


def machine_view(
    machine: Machine, meters: MeterSnapshot | None, recorded: Recorded | None
) -> dict[str, Any]:
    """One machine on the Live page (``recorded`` None: no ledger)."""
    gate, settings = machine.gate, machine.settings
    return {
        "name": machine.name,
        "local": settings.local,
        "state": machine_state(machine),
        "paused": gate.paused,
        "cooldowns": gate.cooldowns,
        "in_flight": gate.in_flight,
        "waiting": gate.waiting,
        "max_concurrency": settings.max_concurrency,
        "max_queue": settings.max_queue,
        "power_w": {} if meters is None else meters.power_w,
        "total_power_w": None if meters is None else total_power_w(meters.power_w),
        "energy": _energy(meters, recorded),
        "meters": None if meters is None else _meters(meters),
        "backends": machine.router.health(),
    }


def _meters(meters: MeterSnapshot) -> dict[str, Any]:
    return {"label": meters.label, "estimated": meters.estimated, "failing": meters.failing}


def _energy(meters: MeterSnapshot | None, recorded: Recorded | None) -> dict[str, float | None]:
    """Its meters' energy since start-up: *attributed* to its requests (their rows: idle
    and dynamic), *unattributed* (nothing in flight), and what neither holds yet:
    requests still in flight, the time since the sampler last settled the unattributed
    part (a tick: a second on a machine with only remote meters), and on such a machine
    the tick between start-up and its meters' first reading."""
    total = None if meters is None else total_power_w(meters.energy_j)
    unattributed = None if meters is None else meters.unattributed_j
    attributed = None if recorded is None else recorded.idle_j + recorded.dynamic_j
    return {
        "total_j": total,
        "attributed_j": attributed,
        "attributed_idle_j": None if recorded is None else recorded.idle_j,
        "attributed_dynamic_j": None if recorded is None else recorded.dynamic_j,
        "unattributed_j": unattributed,
        "unsettled_j": None
        if total is None or attributed is None or unattributed is None
        else total - attributed - unattributed,
    }


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def gateway_view(machines: Sequence[Mapping[str, Any]], waiting: int) -> dict[str, Any]:
    """Every machine added up (an energy figure: over the machines that know it);
    ``waiting``: the requests queued, each once (:func:`~proxy.gate.waiting_on`)."""
    energy = {k: _sum([m["energy"][k] for m in machines]) for k in ENERGY_KEYS}
    return {
        "machines": len(machines),
        "machines_measured": sum(1 for m in machines if m["total_power_w"] is not None),
        "total_power_w": _sum([m["total_power_w"] for m in machines]),
        "in_flight": sum(m["in_flight"] for m in machines),
        "waiting": waiting,
        "max_concurrency": sum(m["max_concurrency"] for m in machines),
        "busy": sum(1 for m in machines if m["in_flight"]),
        "paused": sum(1 for m in machines if m["paused"]),
        "energy": energy,
    }
