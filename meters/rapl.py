"""CPU package, DRAM and platform energy from RAPL in ``/sys/class/powercap``.

Intel and AMD (with the ``intel_rapl`` driver) both expose zones there::

    intel-rapl:0/          name = package-0   -> cpu
    intel-rapl:0/intel-rapl:0:0   core        (inside the package: ignored)
    intel-rapl:0/intel-rapl:0:2   dram        -> dram
    intel-rapl:1/          name = psys        -> psys (only with meters.rapl_psys)

``intel-rapl-mmio:*`` repeats the package zone through another interface and is
skipped so it is not counted twice. Each ``energy_uj`` is a microjoule counter
that wraps at ``max_energy_range_uj``; the meter keeps a running total per zone
and adds one range whenever a read is lower than the one before. That is only
right if at most one wrap happens between reads, so the meter asks the sampler
to read it at least every :attr:`RaplMeter.max_poll_interval_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import MeterError, MeterUnavailable
from meters.base import Meter, MeterAbsent, Reading
from meters.sysfs import FileReader, read_once

log = logging.getLogger("joulegate.meters")

ASSUMED_MAX_POWER_W = 1000.0
"""A bound on one zone's power, used to space reads so a counter wraps at most once."""

GRANT_HINT = (
    "since Linux 5.10 RAPL counters are readable by root only; grant read access with "
    "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*/intel-rapl:*/energy_uj` (until reboot), or for good "
    'with a udev rule such as `SUBSYSTEM=="powercap", ACTION=="add", '
    'RUN+="/bin/chmod o+r /sys%p/energy_uj"` in /etc/udev/rules.d/90-joulegate-rapl.rules'
)


@dataclass(slots=True)
class _Zone:
    component: str
    path: Path
    range_uj: int
    last_uj: int
    total_j: float = 0.0


class RaplMeter(Meter):
    """RAPL zones summed into ``cpu``, ``dram`` and optionally ``psys``."""

    name = "rapl"

    def __init__(
        self,
        root: str | Path = "/sys/class/powercap",
        *,
        psys: bool = False,
        read_text: Callable[[Path], str] | None = None,
    ) -> None:
        self._root = Path(root)
        # Counters are read often: through kept-open files unless a reader is given.
        self._files = FileReader() if read_text is None else None
        self._read_counter: Callable[[Path], str] = read_text or self._files or read_once
        read_text = self._read_text = read_text or read_once
        self._zones: list[_Zone] = []
        self.skipped: list[str] = []
        """Zones left out, with the reason (logged at start-up)."""
        denied: list[str] = []
        for folder, component in self._discover(psys):
            try:
                energy = int(self._read_counter(folder / "energy_uj"))
                range_uj = int(read_text(folder / "max_energy_range_uj"))
            except PermissionError:
                denied.append(str(folder / "energy_uj"))
                continue
            except (OSError, ValueError) as exc:
                self.skipped.append(f"{folder.name}: {exc}")
                continue
            self._zones.append(_Zone(component, folder / "energy_uj", range_uj, energy))
        if not self._zones:
            if denied:
                raise MeterUnavailable(f"cannot read {', '.join(denied)}: {GRANT_HINT}")
            raise MeterUnavailable(
                f"no readable RAPL zone under {self._root}"
                + (f" ({'; '.join(self.skipped)})" if self.skipped else "")
            )
        self.skipped += [f"{d}: permission denied ({GRANT_HINT})" for d in denied]
        self._components = tuple(dict.fromkeys(z.component for z in self._zones))

    def _discover(self, psys: bool) -> list[tuple[Path, str]]:
        try:
            tops = sorted(self._root.glob("intel-rapl:*"))
        except OSError as exc:  # pragma: no cover - glob swallows most errors
            raise MeterUnavailable(f"cannot list {self._root}: {exc}") from exc
        if not tops:
            raise MeterAbsent(f"no RAPL zones under {self._root}")
        found: list[tuple[Path, str]] = []
        for top in tops:
            name = self._name(top)
            if name.startswith("package"):
                found.append((top, "cpu"))
            elif name == "psys":
                if psys:
                    found.append((top, "psys"))
                continue
            for sub in sorted(top.glob("intel-rapl:*")):
                if self._name(sub) == "dram":
                    found.append((sub, "dram"))
        return found

    def _name(self, folder: Path) -> str:
        try:
            return self._read_text(folder / "name")
        except OSError:
            return ""

    @property
    def components(self) -> tuple[str, ...]:
        """``cpu``, ``dram`` and ``psys`` as present."""
        return self._components

    @property
    def max_poll_interval_s(self) -> float:
        """Half the time the fastest-wrapping counter needs to wrap at full power."""
        return min(z.range_uj / 1e6 for z in self._zones) / ASSUMED_MAX_POWER_W / 2

    def read(self) -> dict[str, Reading]:
        """Each component's running total in joules (wraps unrolled)."""
        totals: dict[str, float] = dict.fromkeys(self._components, 0.0)
        for z in self._zones:
            try:
                now = int(self._read_counter(z.path))
            except (OSError, ValueError) as exc:
                raise MeterError(f"RAPL {z.path}: {exc}") from exc
            delta = now - z.last_uj
            if delta < 0:
                delta += z.range_uj
            z.last_uj = now
            z.total_j += delta / 1e6
            totals[z.component] += z.total_j
        return {c: Reading(energy_j=e) for c, e in totals.items()}

    def describe(self) -> str:
        """E.g. ``rapl: cpu (2 zones), dram (2 zones)``."""
        parts = []
        for c in self._components:
            n = sum(1 for z in self._zones if z.component == c)
            parts.append(f"{c} ({n} zone{'s' if n != 1 else ''})")
        return f"rapl: {', '.join(parts)} from {self._root}"

    def close(self) -> None:
        """Close the kept-open counter files."""
        if self._files is not None:
            self._files.close()
