"""Find the machine's hardware once at start-up (:class:`~proxy.host.Host`).

CPU model, logical CPUs, memory and whether the machine is virtual come from
``/proc`` and DMI (as the estimate meter reads them); the GPUs from NVML, through
the same :class:`~meters.nvml.NvmlMeter` that meters them, whatever meters are in
use. Nothing here raises: a part that cannot be read is left empty and logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from config import MeterSettings
from config.errors import MeterUnavailable
from meters.estimate import parse_stat
from meters.nvml import NvmlMeter
from meters.sysfs import read_once
from meters.vcpu import CpuInfo, memory_gib, virtual_reason
from proxy.host import Host

log = logging.getLogger("joulegate.meters")


def _logical_cpus(proc_root: Path) -> int:
    try:
        _, cpus = parse_stat(read_once(proc_root / "stat"))
    except OSError:
        cpus = 0
    return cpus or os.cpu_count() or 1


def _gpu_names(settings: MeterSettings, nvml: Any | None) -> tuple[str, ...]:
    try:
        meter = NvmlMeter(nvml, settings.gpu_indices)
    except MeterUnavailable as exc:
        log.info("machine: no GPU counted for embodied emissions (%s)", exc)
        return ()
    try:
        return meter.names
    finally:
        meter.close()


def detect_host(settings: MeterSettings, *, nvml: Any | None = None) -> Host:
    """The machine as ``/proc``, DMI and NVML describe it (blocking: call it in a thread).

    ``nvml`` is a ``pynvml``-like module; tests pass a fake one.
    """
    proc_root = Path(settings.proc_root)
    info = CpuInfo.read(proc_root)
    machine = Host(
        cpu_model=info.model_name,
        logical_cpus=_logical_cpus(proc_root),
        memory_gib=memory_gib(proc_root),
        virtual=virtual_reason(info, Path(settings.dmi_root)),
        gpus=_gpu_names(settings, nvml),
    )
    log.info("machine: %s", machine.as_dict())
    return machine
