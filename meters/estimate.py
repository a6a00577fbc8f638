"""An estimate for machines without counters (a plain cloud VM, a container).

CPU: the TDP of the machine's CPUs times their utilisation. Utilisation comes
from the busy jiffies in ``/proc/stat``, so the meter is a *counter*::

    cpu energy_j = watts per logical CPU x busy CPU-seconds

which integrates utilisation exactly between any two reads. The TDP is
``meters.cpu_tdp_w`` when set (for all the CPUs this machine sees), else, on
bare metal, the bundled table ``data/cpu_tdp.csv`` (TDP and threads per socket).

On a virtual machine, or a CPU not in that table, the meter uses Cloud Carbon
Footprint's per-vCPU coefficients instead (see :mod:`meters.vcpu`)::

    cpu energy_j  = min_w x idle CPU-seconds + max_w x busy CPU-seconds
    dram energy_j = 0.392 W/GiB x GiB of MemTotal x elapsed seconds

(idle and elapsed from the same ``/proc/stat`` jiffies), and reports with each
reading ``energy_low_j`` / ``energy_high_j`` computed with the lowest and
highest plausible coefficients. Energy is monotone in both coefficients, so
those bracket the figure.

GPU: ``meters.gpu_board_power_w`` for as long as a request holds a slot.

Everything this meter reports is labelled ``estimated``.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import os
from dataclasses import dataclass
from pathlib import Path

from config.errors import MeterError, MeterUnavailable
from meters.base import Activity, Meter, Reading
from meters.sysfs import FileReader, read_once
from meters.vcpu import (
    MEMORY_W_PER_GB,
    Choice,
    CpuInfo,
    architecture,
    choose_coefficients,
    memory_gib,
    virtual_reason,
)

_BUSY_FIELDS = (0, 1, 2, 5, 6)
"""user, nice, system, irq, softirq (idle, iowait and steal are not this machine's work)."""


@dataclass(frozen=True, slots=True)
class TdpRow:
    """One row of the bundled table."""

    pattern: str
    tdp_w: float
    threads: int


def load_tdp_table() -> list[TdpRow]:
    """The bundled CPU TDP table."""
    text = importlib.resources.files("meters").joinpath("data/cpu_tdp.csv").read_text("utf-8")
    lines = [line for line in io.StringIO(text) if not line.startswith("#")]
    return [
        TdpRow(row["pattern"], float(row["tdp_w"]), int(row["threads"]))
        for row in csv.DictReader(lines)
    ]


def lookup_tdp(model: str, table: list[TdpRow] | None = None) -> TdpRow | None:
    """The table row for a ``model name``: the longest pattern it contains."""
    wanted = model.lower()
    hits = [r for r in (table or load_tdp_table()) if r.pattern.lower() in wanted]
    return max(hits, key=lambda r: len(r.pattern)) if hits else None


def _jiffies(cpu_line: str) -> tuple[int, int] | None:
    """(busy, all) jiffies of the aggregate ``cpu`` line (guest time is inside user)."""
    fields = cpu_line.split()
    if not fields or fields[0] != "cpu":
        return None
    try:
        values = [int(v) for v in fields[1:9]]
    except ValueError:
        return None
    return sum(values[i] for i in _BUSY_FIELDS if i < len(values)), sum(values)


def parse_stat(text: str) -> tuple[tuple[int, int] | None, int]:
    """((busy, all) jiffies of all CPUs, or None; number of ``cpuN`` lines) from ``/proc/stat``."""
    first, _, rest = text.partition("\n")
    cpus = 0
    for line in rest.splitlines():
        if not line.startswith("cpu"):
            break
        cpus += 1
    return _jiffies(first), cpus


class EstimateMeter(Meter):
    """CPU TDP x utilisation, plus a GPU's board power while a request runs."""

    name = "estimate"
    estimated = True

    def __init__(
        self,
        *,
        proc_root: str | Path = "/proc",
        dmi_root: str | Path = "/sys/class/dmi/id",
        cpu_tdp_w: float = 0.0,
        gpu_board_power_w: float = 0.0,
        activity: Activity | None = None,
        clock_ticks_per_s: int | None = None,
    ) -> None:
        self._stat = Path(proc_root) / "stat"
        self._hz = clock_ticks_per_s or os.sysconf("SC_CLK_TCK")
        try:
            text = read_once(self._stat)
        except OSError as exc:
            raise MeterUnavailable(f"cannot read {self._stat}: {exc}") from exc
        jiffies, cpus = parse_stat(text)
        if jiffies is None or not cpus:
            raise MeterUnavailable(f"{self._stat} has no cpu lines")
        self._files = FileReader()
        self.cpus = cpus
        info = CpuInfo.read(Path(proc_root))
        self.model = info.model_name
        self.virtual = virtual_reason(info, Path(dmi_root))
        self.vcpu: Choice | None = None
        self.memory_w = 0.0
        row = None if self.virtual else lookup_tdp(self.model)
        if cpu_tdp_w > 0:
            self.tdp_source = "meters.cpu_tdp_w"
            self.cpu_tdp_w = cpu_tdp_w
            self.estimate_model = f"tdp: meters.cpu_tdp_w {cpu_tdp_w:g} W/{cpus} CPUs"
        elif row is not None:
            self.tdp_source = f"table: {row.pattern}, {row.tdp_w:g} W per {row.threads} threads"
            self.cpu_tdp_w = row.tdp_w / row.threads * cpus
            self.estimate_model = f"tdp-table: {row.pattern} {row.tdp_w:g} W/{row.threads} threads"
        else:
            self.vcpu = c = choose_coefficients(architecture(info))
            self.memory_w = memory_gib(Path(proc_root)) * MEMORY_W_PER_GB
            why = (
                f"virtual machine ({self.virtual})" if self.virtual else "CPU not in the TDP table"
            )
            self.tdp_source = f"{why}; {c.central.architecture}: {c.how}"
            self.cpu_tdp_w = c.central.max_w * cpus
            self.estimate_model = (
                f"ccf-vcpu {c.central.architecture} {c.central.min_w:.2f}-{c.central.max_w:.2f}"
                f" W/vCPU (range {c.low.min_w:.2f}-{c.high.max_w:.2f}) + {MEMORY_W_PER_GB} W/GB"
            )
        self._w_per_busy_cpu = self.cpu_tdp_w / cpus
        self._start_busy, self._start_all = jiffies
        self.gpu_board_power_w = gpu_board_power_w
        self._activity = activity or Activity()
        # /proc/stat counts whole jiffies: a read within one shows no new CPU time. The
        # GPU part follows the request's activity to the instant, so it always reads.
        self.update_period_s = 0.0 if gpu_board_power_w > 0 else 1.0 / self._hz

    @property
    def components(self) -> tuple[str, ...]:
        """``cpu``, ``dram`` with per-vCPU coefficients, ``gpu`` when a board power is set."""
        dram = ("dram",) if self.memory_w > 0 else ()
        return ("cpu", *dram, *(("gpu",) if self.gpu_board_power_w > 0 else ()))

    def power_range_w(self) -> tuple[float, float]:
        """(idle floor, full load) of the CPU and DRAM parts in watts: what an idle
        baseline between them tells about how busy the machine was (a GPU board power
        counts only while a request runs, so it is in neither)."""
        if self.vcpu is None:
            return 0.0, self.cpu_tdp_w
        c = self.vcpu.central
        return self.cpus * c.min_w + self.memory_w, self.cpus * c.max_w + self.memory_w

    def read(self) -> dict[str, Reading]:
        """Estimated energy counters since the meter started."""
        try:
            first = self._files(self._stat).partition("\n")[0]
        except OSError as exc:
            raise MeterError(f"cannot read {self._stat}: {exc}") from exc
        jiffies = _jiffies(first)
        if jiffies is None:
            raise MeterError(f"{self._stat} does not start with the cpu line")
        busy_s = (jiffies[0] - self._start_busy) / self._hz
        if self.vcpu is None:
            out = {"cpu": Reading(energy_j=busy_s * self._w_per_busy_cpu)}
        else:
            all_s = (jiffies[1] - self._start_all) / self._hz
            idle_s = max(0.0, all_s - busy_s)
            c = self.vcpu
            out = {
                "cpu": Reading(
                    energy_j=c.central.min_w * idle_s + c.central.max_w * busy_s,
                    energy_low_j=c.low.min_w * idle_s + c.low.max_w * busy_s,
                    energy_high_j=c.high.min_w * idle_s + c.high.max_w * busy_s,
                )
            }
            if self.memory_w > 0:
                dram_j = self.memory_w * all_s / self.cpus
                out["dram"] = Reading(energy_j=dram_j, energy_low_j=dram_j, energy_high_j=dram_j)
        if self.gpu_board_power_w > 0:
            out["gpu"] = Reading(energy_j=self.gpu_board_power_w * self._activity.busy_s())
        return out

    def describe(self) -> str:
        """E.g. ``estimate: cpu 12.5 W TDP (table: …) x utilisation of 4 CPUs``."""
        if self.vcpu is not None:
            c = self.vcpu.central
            text = (
                f"estimate: cpu {self.cpus} vCPUs x ({c.min_w:.3g} + utilisation x "
                f"{c.max_w - c.min_w:.3g}) W ({self.tdp_source}) from {self._stat}, "
                f"dram {self.memory_w:.3g} W; model {self.estimate_model}"
            )
            if self.gpu_board_power_w > 0:
                text += f", gpu {self.gpu_board_power_w:g} W board power while a request runs"
            return text + "; estimated"
        text = (
            f"estimate: cpu {self.cpu_tdp_w:g} W TDP ({self.tdp_source}) "
            f"x utilisation of {self.cpus} CPUs from {self._stat}"
        )
        if self.gpu_board_power_w > 0:
            text += f", gpu {self.gpu_board_power_w:g} W board power while a request runs"
        return text + "; estimated"

    def close(self) -> None:
        """Close the kept-open ``/proc/stat``."""
        self._files.close()
