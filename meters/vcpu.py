"""Per-vCPU coefficients for machines whose CPU power cannot be looked up.

A cloud VM sees a few vCPUs of a large host, and often a cut model name
("AMD EPYC"); a whole-socket TDP says little about it. Cloud Carbon Footprint
publishes, per CPU micro-architecture, the watts one vCPU draws idle and at full
load (``data/ccf_vcpu_coefficients.csv``, Apache-2.0, see ``data/SOURCES.md``)::

    cpu power_w = n_vcpus x (min_w + utilisation x (max_w - min_w))
    dram power_w = GiB of MemTotal x 0.392

This module tells whether the machine is virtual (:func:`virtual_reason`), which
micro-architecture its CPU is (:func:`architecture`), and which coefficients to
use with what range (:func:`choose_coefficients`):

* a known architecture: its row, with a stated band of ±25 % around both
  figures (CCF's rows are averages over a few SPECpower machines; the band is a
  stated allowance, not a measured confidence interval);
* an unknown one: the average of all rows (as CCF does), ranging from the
  lowest to the highest row.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
from dataclasses import dataclass
from pathlib import Path

MEMORY_W_PER_GB = 0.392
"""CCF's memory coefficient, watts per GB of RAM (GiB of MemTotal here)."""
KNOWN_BAND = 0.25
"""Relative half-width of the range around a known architecture's coefficients."""

_DMI_FILES = ("sys_vendor", "product_name", "bios_vendor")
_DMI_MARKERS = (
    "kvm", "qemu", "vmware", "virtualbox", "innotek", "xen", "amazon ec2",
    "google compute engine", "virtual machine", "openstack", "bochs", "hetzner",
    "parallels", "cloud hypervisor", "bhyve", "droplet",
)  # fmt: skip
"""Lower-case fragments of DMI names that only hypervisors report."""

_INTEL_MODELS = {
    42: "Sandy Bridge", 45: "Sandy Bridge",
    58: "Ivy Bridge", 62: "Ivy Bridge",
    60: "Haswell", 63: "Haswell", 69: "Haswell", 70: "Haswell",
    61: "Broadwell", 71: "Broadwell", 79: "Broadwell", 86: "Broadwell",
    78: "Skylake", 94: "Skylake",
    142: "Coffee Lake", 158: "Coffee Lake", 165: "Coffee Lake",
    106: "Ice Lake", 108: "Ice Lake", 126: "Ice Lake",
    143: "Sapphire Rapids", 207: "Emerald Rapids", 173: "Granite Rapids", 174: "Granite Rapids",
}  # fmt: skip
"""Intel family 6 model numbers (decimal, as /proc/cpuinfo shows them)."""
_ARM_PARTS = {0xD0C: "Graviton2", 0xD40: "Graviton3", 0xD4F: "Graviton4"}
"""Arm Neoverse N1, V1, V2: the cores of AWS Graviton 2, 3 and 4."""


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The first processor's block of ``/proc/cpuinfo``."""

    fields: dict[str, str]

    @classmethod
    def read(cls, proc_root: Path) -> CpuInfo:
        """Parse ``cpuinfo`` under ``proc_root`` (empty when unreadable)."""
        try:
            text = (proc_root / "cpuinfo").read_text("utf-8", "replace")
        except OSError:
            return cls({})
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break  # the blank line after the first processor
                continue
            fields.setdefault(key.strip(), value.strip())
        return cls(fields)

    @property
    def model_name(self) -> str:
        """``model name`` (empty on most ARM machines)."""
        return self.fields.get("model name", "")

    @property
    def flags(self) -> frozenset[str]:
        """The x86 ``flags`` (``Features`` on ARM)."""
        return frozenset((self.fields.get("flags") or self.fields.get("Features", "")).split())

    def number(self, key: str) -> int | None:
        """A numeric field (decimal or ``0x`` hex), None when absent or not a number."""
        try:
            return int(self.fields[key], 0)
        except (KeyError, ValueError):
            return None


def virtual_reason(info: CpuInfo, dmi_root: Path) -> str | None:
    """Why this machine looks virtual (``hypervisor flag``, ``DMI sys_vendor QEMU``), or None."""
    if "hypervisor" in info.flags:
        return "hypervisor flag"
    for name in _DMI_FILES:
        try:
            value = (dmi_root / name).read_text("utf-8", "replace").strip()
        except OSError:
            continue
        if any(marker in value.lower() for marker in _DMI_MARKERS):
            return f"DMI {name} {value}"
    return None


def architecture(info: CpuInfo) -> str | None:
    """The CPU's micro-architecture as the coefficient table names it, or None."""
    vendor = info.fields.get("vendor_id", "")
    family, model = info.number("cpu family"), info.number("model")
    if vendor == "GenuineIntel" and family == 6 and model is not None:
        if model == 85:  # Skylake-SP until stepping 4, then Cascade Lake (Cooper Lake 10+)
            stepping = info.number("stepping")
            return None if stepping is None else "Skylake" if stepping < 5 else "Cascade Lake"
        return _INTEL_MODELS.get(model)
    if vendor in ("AuthenticAMD", "HygonGenuine") and family is not None and model is not None:
        if family == 23:
            return "EPYC 1st Gen" if model < 0x30 else "EPYC 2nd Gen"
        if family == 25:
            return (
                "EPYC 4th Gen" if 0x10 <= model < 0x20 or 0xA0 <= model < 0xB0 else "EPYC 3rd Gen"
            )
        if family == 26:
            return "EPYC 5th Gen"
        return None
    if info.number("CPU implementer") == 0x41:
        part = info.number("CPU part")
        return None if part is None else _ARM_PARTS.get(part)
    return None


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Watts per vCPU idle and at full load."""

    architecture: str
    min_w: float
    max_w: float


@dataclass(frozen=True, slots=True)
class Choice:
    """The coefficients used, and the lowest and highest plausible ones."""

    central: Coefficients
    low: Coefficients
    high: Coefficients
    how: str
    """``table row`` or ``average of N architectures; … not known``."""


def load_coefficients() -> list[Coefficients]:
    """The bundled CCF table."""
    path = "data/ccf_vcpu_coefficients.csv"
    text = importlib.resources.files("meters").joinpath(path).read_text("utf-8")
    lines = [line for line in io.StringIO(text) if not line.startswith("#")]
    return [
        Coefficients(
            row["architecture"], float(row["min_watts_per_vcpu"]), float(row["max_watts_per_vcpu"])
        )
        for row in csv.DictReader(lines)
    ]


def choose_coefficients(arch: str | None, table: list[Coefficients] | None = None) -> Choice:
    """The row for ``arch``, or the average of all rows when it is unknown."""
    rows = table or load_coefficients()
    row = next((r for r in rows if r.architecture == arch), None)
    if row is not None:
        lo, hi = 1.0 - KNOWN_BAND, 1.0 + KNOWN_BAND
        return Choice(
            row,
            Coefficients(row.architecture, row.min_w * lo, row.max_w * lo),
            Coefficients(row.architecture, row.min_w * hi, row.max_w * hi),
            f"table row, range ±{KNOWN_BAND:.0%}",
        )
    mins, maxs = [r.min_w for r in rows], [r.max_w for r in rows]
    why = f"{arch} is not in the table" if arch else "architecture not known"
    return Choice(
        Coefficients("average", sum(mins) / len(rows), sum(maxs) / len(rows)),
        Coefficients("lowest", min(mins), min(maxs)),
        Coefficients("highest", max(mins), max(maxs)),
        f"average of {len(rows)} architectures ({why}), range lowest to highest row",
    )


def memory_gib(proc_root: Path) -> float:
    """GiB of ``MemTotal`` in ``/proc/meminfo`` (0 when unreadable)."""
    try:
        text = (proc_root / "meminfo").read_text("utf-8", "replace")
    except OSError:
        return 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            try:
                return int(value.split()[0]) / (1024 * 1024)
            except (IndexError, ValueError):
                return 0.0
    return 0.0
