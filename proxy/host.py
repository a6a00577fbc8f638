"""What hardware joulegate runs on: the contract between the meters, which find it at
start-up, and the capabilities that need it (the carbon stage's embodied emissions,
``/readyz``, a study's methods).

The meters component publishes one :class:`Host` (``ctx.publish``); others read it
with ``ctx.get(Host)``. This module imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Host:
    """The machine as detected once at start-up."""

    cpu_model: str
    """``model name`` of ``/proc/cpuinfo`` (empty when unknown, as on most Arm machines)."""
    logical_cpus: int
    """Logical CPUs (vCPUs on a virtual machine) this system sees."""
    memory_gib: float
    """``MemTotal`` in GiB (0 when unknown)."""
    virtual: str | None
    """Why the machine looks virtual (``hypervisor flag``, ``DMI sys_vendor QEMU``), or
    None on bare metal."""
    gpus: tuple[str, ...] = ()
    """Names of the GPUs NVML finds (those of ``meters.gpu_indices`` when set)."""

    def as_dict(self) -> dict[str, Any]:
        """For ``/readyz`` and a study's methods."""
        return {
            "cpu_model": self.cpu_model,
            "logical_cpus": self.logical_cpus,
            "memory_gib": round(self.memory_gib, 2),
            "virtual": self.virtual,
            "gpus": list(self.gpus),
        }
