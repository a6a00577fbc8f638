"""An estimate for machines without counters (a plain cloud VM, a container).

CPU: the TDP of the machine's CPUs times their utilisation. Utilisation comes
from the busy jiffies in ``/proc/stat``, so the meter is a *counter*::

    cpu energy_j = watts per logical CPU x busy CPU-seconds

which integrates utilisation exactly between any two reads. The TDP is
``meters.cpu_tdp_w`` when set (for all the CPUs this machine sees), else the
bundled table ``data/cpu_tdp.csv`` (TDP and threads per socket, so a VM that
sees 4 threads of a 112-thread part gets 4/112 of its TDP), else 85 W.

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

DEFAULT_TDP_W = 85.0
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


def cpu_model(proc_root: Path) -> str:
    """``model name`` from ``/proc/cpuinfo`` (empty when absent, e.g. on ARM)."""
    try:
        text = (proc_root / "cpuinfo").read_text("utf-8", "replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def _busy(cpu_line: str) -> int | None:
    fields = cpu_line.split()
    if not fields or fields[0] != "cpu":
        return None
    try:
        return sum(int(fields[1 + i]) for i in _BUSY_FIELDS if 1 + i < len(fields))
    except ValueError:
        return None


def parse_stat(text: str) -> tuple[int | None, int]:
    """(busy jiffies of all CPUs or None, number of ``cpuN`` lines) from ``/proc/stat``."""
    first, _, rest = text.partition("\n")
    cpus = 0
    for line in rest.splitlines():
        if not line.startswith("cpu"):
            break
        cpus += 1
    return _busy(first), cpus


class EstimateMeter(Meter):
    """CPU TDP x utilisation, plus a GPU's board power while a request runs."""

    name = "estimate"
    estimated = True

    def __init__(
        self,
        *,
        proc_root: str | Path = "/proc",
        cpu_tdp_w: float = 0.0,
        gpu_board_power_w: float = 0.0,
        activity: Activity | None = None,
        clock_ticks_per_s: int | None = None,
    ) -> None:
        self._stat = Path(proc_root) / "stat"
        self._hz = clock_ticks_per_s or os.sysconf("SC_CLK_TCK")
        try:
            busy, cpus = parse_stat(read_once(self._stat))
        except OSError as exc:
            raise MeterUnavailable(f"cannot read {self._stat}: {exc}") from exc
        if busy is None or not cpus:
            raise MeterUnavailable(f"{self._stat} has no cpu lines")
        self._files = FileReader()
        self.cpus = cpus
        self.model = cpu_model(Path(proc_root))
        if cpu_tdp_w > 0:
            self.tdp_source = "meters.cpu_tdp_w"
            self.cpu_tdp_w = cpu_tdp_w
        elif (row := lookup_tdp(self.model)) is not None:
            self.tdp_source = f"table: {row.pattern}, {row.tdp_w:g} W per {row.threads} threads"
            self.cpu_tdp_w = row.tdp_w / row.threads * cpus
        else:
            self.tdp_source = f"default; {self.model or 'this CPU'} is not in the table"
            self.cpu_tdp_w = DEFAULT_TDP_W
        self._w_per_busy_cpu = self.cpu_tdp_w / cpus
        self._start_busy = busy
        self.gpu_board_power_w = gpu_board_power_w
        self._activity = activity or Activity()

    @property
    def components(self) -> tuple[str, ...]:
        """``cpu``, and ``gpu`` when a board power is configured."""
        return ("cpu", "gpu") if self.gpu_board_power_w > 0 else ("cpu",)

    def read(self) -> dict[str, Reading]:
        """Estimated energy counters since the meter started."""
        try:
            first = self._files(self._stat).partition("\n")[0]
        except OSError as exc:
            raise MeterError(f"cannot read {self._stat}: {exc}") from exc
        busy = _busy(first)
        if busy is None:
            raise MeterError(f"{self._stat} does not start with the cpu line")
        cpu_j = (busy - self._start_busy) / self._hz * self._w_per_busy_cpu
        out = {"cpu": Reading(energy_j=cpu_j)}
        if self.gpu_board_power_w > 0:
            out["gpu"] = Reading(energy_j=self.gpu_board_power_w * self._activity.busy_s())
        return out

    def describe(self) -> str:
        """E.g. ``estimate: cpu 85 W TDP (default; …) x utilisation of 2 CPUs``."""
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
