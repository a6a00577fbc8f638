"""Embodied emissions that fit the machine: SCI's ``TE``, chosen once at start-up.

From the :class:`~proxy.host.Host` the meters found, in this order:

1. ``carbon.embodied_g`` set (0 or more): that figure, whatever the hardware;
2. GPUs found by NVML: ``n x 164 kg`` (one H100's manufacturing) plus the share of an
   AI server's base (5,700 kg for 8 GPUs) that ``n`` GPUs take, ``5,700 x n / 8``;
3. a virtual machine: its vCPUs' share of a generic server's 1,000 kg, the host taken
   as 96 vCPUs (Cloud Carbon Footprint's per-instance method);
4. bare metal without GPUs: a generic server's 1,000 kg.

The figures and their sources are the bundled ``data/embodied.json``
(``data/SOURCES.md``). Each choice is named (:attr:`Embodied.model`) in every
answer's ``energy.embodied_model`` and the ledger's ``embodied_model`` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from proxy.host import Host


@dataclass(frozen=True, slots=True)
class Figures:
    """The bundled figures (``data/embodied.json``)."""

    gpu_kg: float
    gpu_server_base_kg: float
    gpu_server_slots: int
    server_kg: float
    host_vcpus: int

    @classmethod
    def bundled(cls) -> Figures:
        """The figures shipped with joulegate."""
        text = resources.files("accounting").joinpath("data/embodied.json").read_text("utf-8")
        data: dict[str, Any] = json.loads(text)
        return cls(
            gpu_kg=float(data["gpu_kg"]["value"]),
            gpu_server_base_kg=float(data["gpu_server_base_kg"]["value"]),
            gpu_server_slots=int(data["gpu_server_slots"]["value"]),
            server_kg=float(data["server_kg"]["value"]),
            host_vcpus=int(data["host_vcpus"]["value"]),
        )


@dataclass(frozen=True, slots=True)
class Embodied:
    """The hardware's embodied emissions and how they were chosen."""

    total_g: float
    """``TE`` in gCO2e."""
    model: str
    """E.g. ``gpu-server: 1 x NVIDIA H100 (164 kg) + 1/8 of a 5,700 kg server base``."""


def _kg(value: float) -> str:
    return f"{value:,.1f}".removesuffix(".0")


def embodied_for(
    machine: Host | None, override_g: float | None, figures: Figures | None = None
) -> Embodied:
    """The embodied emissions for ``machine`` (None: not detected), or the override."""
    f = figures or Figures.bundled()
    if override_g is not None:
        return Embodied(override_g, f"fixed: carbon.embodied_g {_kg(override_g / 1000)} kg")
    if machine is None:
        return Embodied(
            f.server_kg * 1000,
            f"cpu-server: generic server {_kg(f.server_kg)} kg (hardware not detected)",
        )
    if machine.gpus:
        n = len(machine.gpus)
        names = ", ".join(sorted(set(machine.gpus)))
        base_kg = f.gpu_server_base_kg * n / f.gpu_server_slots
        total_kg = n * f.gpu_kg + base_kg
        # One cited per-GPU figure exists (the H100's): other GPUs are charged it, and
        # the model says so rather than pass it off as theirs.
        others = sorted({g for g in machine.gpus if "H100" not in g.upper()})
        caveat = f" (the H100's figure, applied to {', '.join(others)})" if others else ""
        return Embodied(
            total_kg * 1000,
            f"gpu-server: {n} GPU{'s' if n != 1 else ''} ({names}) x {_kg(f.gpu_kg)} kg"
            f"{caveat} + {n}/{f.gpu_server_slots} of a {_kg(f.gpu_server_base_kg)} kg "
            f"server base = {_kg(total_kg)} kg",
        )
    if machine.virtual:
        vcpus = machine.logical_cpus
        total_kg = f.server_kg * vcpus / f.host_vcpus
        return Embodied(
            total_kg * 1000,
            f"vm-share: {vcpus} of {f.host_vcpus} host vCPUs x generic server "
            f"{_kg(f.server_kg)} kg = {_kg(total_kg)} kg",
        )
    return Embodied(f.server_kg * 1000, f"cpu-server: generic server {_kg(f.server_kg)} kg")
