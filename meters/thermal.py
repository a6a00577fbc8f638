"""The thermal guard (the cool-down break) and the CPU's temperature.

When the hottest GPU or CPU sensor reaches ``meters.thermal_limit_c`` the guard
pauses the gate: requests in flight finish, nothing new is admitted until
every sensor is below ``meters.thermal_resume_c``. Each response reports how
long it waited for that (``thermal_wait_ms``). GPU temperatures come from NVML;
the CPU's from hwmon (``coretemp`` on Intel, ``k10temp``/``zenpower`` on AMD).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from meters.sysfs import read_once

log = logging.getLogger("joulegate.meters")

CPU_SENSORS = frozenset({"coretemp", "k10temp", "zenpower", "cpu_thermal"})


class Pausable(Protocol):
    """What the guard needs of the gate."""

    @property
    def paused(self) -> bool:
        """Whether admissions are stopped."""

    def pause(self) -> None:
        """Stop admitting."""

    def resume(self) -> None:
        """Admit again."""


class CpuThermometer:
    """The hottest CPU sensor under ``/sys/class/hwmon`` (blocking reads)."""

    def __init__(
        self,
        root: str | Path = "/sys/class/hwmon",
        read_text: Callable[[Path], str] = read_once,
    ) -> None:
        self._root = Path(root)
        self._read = read_text
        self._inputs: list[Path] = []
        for hwmon in sorted(self._root.glob("hwmon*")):
            try:
                name = read_text(hwmon / "name")
            except OSError:
                continue
            if name in CPU_SENSORS:
                self._inputs += sorted(hwmon.glob("temp*_input"))

    def temperatures_c(self) -> dict[str, float]:
        """``{"cpu": hottest °C}``, or empty when no sensor can be read."""
        values = []
        for path in self._inputs:
            try:
                values.append(int(self._read(path)) / 1000.0)
            except (OSError, ValueError):
                continue
        return {"cpu": max(values)} if values else {}


class ThermalGuard:
    """Pauses the gate above the limit and resumes it below the resume level."""

    def __init__(
        self,
        gate: Pausable,
        read_temperatures_c: Callable[[], dict[str, float]],
        *,
        limit_c: float,
        resume_c: float,
        interval_s: float = 1.0,
    ) -> None:
        self._gate = gate
        self._read = read_temperatures_c
        self.limit_c = limit_c
        self.resume_c = resume_c
        self.interval_s = interval_s
        self._warned_blind = False

    def check(self, temperatures_c: dict[str, float]) -> None:
        """Pause or resume the gate for one set of readings."""
        if not temperatures_c:
            if self._gate.paused:
                self._gate.resume()  # never hold requests on a sensor we cannot read
            if not self._warned_blind:
                self._warned_blind = True
                log.warning("thermal guard: no temperature could be read; it cannot act")
            return
        self._warned_blind = False
        sensor, hottest = max(temperatures_c.items(), key=lambda kv: kv[1])
        if not self._gate.paused and hottest >= self.limit_c:
            self._gate.pause()
            log.warning(
                "thermal guard: %s at %.0f °C >= %.0f °C; admitting nothing until below %.0f °C",
                sensor, hottest, self.limit_c, self.resume_c,
            )  # fmt: skip
        elif self._gate.paused and hottest < self.resume_c:
            self._gate.resume()
            log.info("thermal guard: %s cooled to %.0f °C; admitting again", sensor, hottest)

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled; the reads run in a thread."""
        while True:
            try:
                self.check(await asyncio.to_thread(self._read))
            except Exception:
                log.exception("thermal guard check failed")
            await asyncio.sleep(self.interval_s)
