"""Meters per measurement machine: a sampler, a meter stage and a thermal guard each.

Each machine (:mod:`proxy.machines`) has its own meters, read by its own
:class:`~meters.sampler.Sampler`, whose windows, idle power and sharing under
batching are that machine's alone; a request's energy comes from the sampler of
the machine that served it (``ex.machine``), never another's. The pieces are the
single-machine ones, composed once per machine: a :class:`~meters.stage.MeterStage`
per machine behind one dispatching stage. One :class:`~meters.poller.Poller` reads
every machine's remote meters, from one thread (:mod:`meters.poller`).

A machine that is not ``local`` is read over the network only (Prometheus,
IPMI over LAN, smart plugs; see :data:`~config.machines.REMOTE_KINDS`): when none
of its meters works its requests' energy is unknown (``null`` with a reason),
never an estimate of the gateway's own CPU. Its thermal guard reads its meters'
temperature gauge (``prometheus_temperature_metric``); the CPU thermometer is the
gateway's and serves a ``local`` machine only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from config.machines import MachineSettings
from meters.base import Activity, Meter
from meters.detect import Hardware, detect_meters, detect_remote_meters
from meters.host import detect_host
from meters.poller import Poller
from meters.sampler import Sampler
from meters.stage import MeterStage, meters_check
from meters.thermal import CpuThermometer, ThermalGuard
from proxy.context import AppContext, machine_power
from proxy.exchange import Exchange, Stage
from proxy.gate import THERMAL, PauseReason
from proxy.host import Host
from proxy.machines import Machine

log = logging.getLogger("joulegate.meters")

REMOTE_ONLY_TICK_HZ = 1.0
"""The sampler's local tick on a machine whose meters are all remote."""
_ON = "_meters_machine"
"""Scratch key: the machine whose meters hold the request's open window."""


class MachineMeters(Stage):
    """The meter stage of the request's machine, chosen by ``ex.machine``."""

    name = "meters"

    def __init__(self, stages: Mapping[str, MeterStage]) -> None:
        self.stages = dict(stages)

    async def on_admitted(self, ex: Exchange) -> None:
        """Open the window on the machine's meters (closing the one a move left)."""
        previous: MeterStage | None = ex.scratch.pop(_ON, None)
        if previous is not None:
            _abandon(previous, ex)
        stage = self.stages.get(ex.machine or "")
        if stage is None:
            return
        ex.scratch[_ON] = stage
        await stage.on_admitted(ex)

    async def on_finished(self, ex: Exchange) -> None:
        """Measure the window on the machine that served the request."""
        stage: MeterStage | None = ex.scratch.pop(_ON, None)
        if stage is not None:
            await stage.on_finished(ex)


def _abandon(stage: MeterStage, ex: Exchange) -> None:
    """Close a window without measuring it: the request moved to another machine
    before its first one answered (it never reached that machine's backend)."""
    token = ex.scratch.pop(stage.name, None)
    if token is None:
        return
    now = time.monotonic()
    stage.sampler.close_window(token, now)
    if stage.overlaps is not None:
        stage.overlaps.close(ex.request_id, now)


def find_meters(
    machine: MachineSettings, activity: Activity, hardware: Hardware | None = None
) -> list[Meter]:
    """A machine's meters (blocking): detection as ever on a local machine; on
    another, only the remote kinds configured for it, and no estimate."""
    if machine.local:
        return detect_meters(machine.meters, hardware=hardware, activity=activity).meters
    return detect_remote_meters(machine.meters, machine.remote_kinds, hardware=hardware).meters


@contextlib.asynccontextmanager
async def machines_component(
    ctx: AppContext,
    *,
    meters: Mapping[str, Sequence[Meter]] | None = None,
    hardware: Hardware | None = None,
    thermometer: CpuThermometer | None = None,
) -> AsyncIterator[Stage]:
    """Every machine's meters, sampler and thermal guard; yields the dispatching stage.

    Tests pass ``meters`` (fakes, by machine name) or ``hardware``. The first
    machine's sampler is also ``ctx.get(Sampler)``; every machine's is in
    :class:`~proxy.context.MachinePower`.
    """
    poller = Poller()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, poller.stop)  # after every sampler's
        stages: dict[str, MeterStage] = {}
        for machine in ctx.machines.machines:
            given = None if meters is None else meters.get(machine.name, ())
            stages[machine.name] = await stack.enter_async_context(
                _one_machine(ctx, machine, given, hardware, thermometer, poller=poller)
            )
        yield MachineMeters(stages)


@contextlib.asynccontextmanager
async def meters_component(
    ctx: AppContext,
    *,
    meters: Sequence[Meter] | None = None,
    activity: Activity | None = None,
    thermometer: CpuThermometer | None = None,
    machine: Host | None = None,
) -> AsyncIterator[Stage]:
    """The first machine's meters alone, yielding its :class:`MeterStage` (tests and
    benchmarks that compose one host by hand): the same path :func:`machines_component`
    takes for each machine. Tests pass ``meters`` (fakes), the ``activity`` an estimate
    meter was built with, and the :class:`~proxy.host.Host` as ``machine``."""
    first = ctx.machines.machines[0]
    async with _one_machine(
        ctx, first, meters, None, thermometer, activity=activity, host=machine
    ) as stage:
        yield stage


@contextlib.asynccontextmanager
async def _one_machine(
    ctx: AppContext,
    machine: Machine,
    meters: Sequence[Meter] | None,
    hardware: Hardware | None,
    thermometer: CpuThermometer | None,
    *,
    activity: Activity | None = None,
    host: Host | None = None,
    poller: Poller | None = None,
) -> AsyncIterator[MeterStage]:
    s = machine.settings.meters
    activity = activity or Activity()
    if meters is None:
        meters = await asyncio.to_thread(find_meters, machine.settings, activity, hardware)
    # With only remote meters the local tick reads nothing: it only keeps the books
    # (unattributed energy, pruning), which once a second does as well.
    local_hz = s.sample_hz if any(not m.remote for m in meters) else REMOTE_ONLY_TICK_HZ
    sampler = Sampler(
        meters, sample_hz=local_hz, external_hz=s.external_hz, activity=activity, poller=poller
    )
    for line in sampler.ignored:
        log.info("meter on %s: ignoring %s", machine.name, line)
    if not sampler.meters:
        log.warning("machine %s has no working meter: its energy will be null", machine.name)
    await asyncio.to_thread(sampler.start)
    if host is None and machine.settings.local:  # the hardware these meters see
        host = await asyncio.to_thread(detect_host, s)
    if host is not None and ctx.get(Host) is None:  # embodied carbon, a study's methods
        ctx.publish(host)
    power = machine_power(ctx)
    if not power.by_machine:
        ctx.publish(sampler)
    power.by_machine[machine.name] = sampler
    ctx.ready_checks.append(lambda: meters_check(sampler, host, machine.name))
    guard_task: asyncio.Task[None] | None = None
    if s.thermal_limit_c > 0:
        cpu = (thermometer or CpuThermometer(s.hwmon_root)) if machine.settings.local else None

        def temperatures_c() -> dict[str, float]:
            return {**sampler.temperatures_c(), **(cpu.temperatures_c() if cpu else {})}

        guard = ThermalGuard(
            PauseReason(machine.gate, THERMAL), temperatures_c,
            limit_c=s.thermal_limit_c, resume_c=s.thermal_resume_c,
        )  # fmt: skip
        guard_task = asyncio.create_task(guard.run(), name=f"joulegate-thermal-{machine.name}")
        log.info(
            "thermal guard on %s: pause above %.0f °C, resume below %.0f °C",
            machine.name, s.thermal_limit_c, s.thermal_resume_c,
        )  # fmt: skip
    try:
        stage = MeterStage(sampler, shared=machine.settings.max_concurrency > 1)
        if stage.closer is None:
            yield stage
        else:  # overlapping windows: their shares are split as the intervals close
            async with stage.closer.running():
                yield stage
    finally:
        if guard_task is not None:
            guard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard_task
        await asyncio.to_thread(sampler.close)
        machine_power(ctx).by_machine.pop(machine.name, None)
