"""Fakes for the meters' tests: a virtual clock, synthetic meters, NVML, sysfs and /proc."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.errors import MeterError
from meters.base import Meter, Reading


class VirtualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class CurveMeter(Meter):
    """A synthetic meter with a known power curve P(t).

    ``mode="gauge"`` reports the instantaneous P(t) (the sampler integrates it);
    ``mode="counter"`` reports the exact integral of P from ``t0`` (like RAPL).
    ``energy`` must be the analytic integral of ``power`` from ``t0``.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        power: Callable[[float], float],
        energy: Callable[[float], float],
        *,
        component: str = "machine",
        mode: str = "gauge",
        name: str = "synthetic",
    ) -> None:
        self._clock = clock
        self._power = power
        self._energy = energy
        self._component = component
        self._mode = mode
        self.name = name  # type: ignore[misc]
        self.fail: str | None = None

    @property
    def components(self) -> tuple[str, ...]:
        return (self._component,)

    def read(self) -> dict[str, Reading]:
        if self.fail:
            raise MeterError(self.fail)
        t = self._clock()
        if self._mode == "counter":
            return {self._component: Reading(energy_j=self._energy(t))}
        return {self._component: Reading(power_w=self._power(t))}


class SteadyMeter(Meter):
    """Constant power on the real monotonic clock (counter or gauge), for app tests."""

    def __init__(
        self,
        power_w: float,
        component: str,
        *,
        name: str = "steady",
        counter: bool = True,
        estimated: bool = False,
    ) -> None:
        self.power_w = power_w
        self._component = component
        self._counter = counter
        self._t0 = time.monotonic()
        self.name = name  # type: ignore[misc]
        self.estimated = estimated  # type: ignore[misc]
        self.fail: str | None = None
        self.temperature_c: float | None = None

    @property
    def components(self) -> tuple[str, ...]:
        return (self._component,)

    def read(self) -> dict[str, Reading]:
        if self.fail:
            raise MeterError(self.fail)
        if self._counter:
            energy = self.power_w * (time.monotonic() - self._t0)
            return {self._component: Reading(energy_j=energy, power_w=self.power_w)}
        return {self._component: Reading(power_w=self.power_w)}

    def temperatures_c(self) -> dict[str, float]:
        return {} if self.temperature_c is None else {self.name: self.temperature_c}


# -- NVML ---------------------------------------------------------------------------------


class NVMLError(Exception):
    """Like pynvml's: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        names = {3: "Not Supported", 4: "Insufficient Permissions", 15: "GPU is lost",
                 12: "NVML Shared Library Not Found"}  # fmt: skip
        return names.get(self.value, f"NVML error {self.value}")


@dataclass
class FakeGpu:
    """One fake GPU: counters in the units NVML uses (mJ, mW, °C)."""

    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int = 1_000_000
    power_mw: int = 150_000
    temperature_c: int = 45
    counter_supported: bool = True


@dataclass
class FakeNvml:
    """A stand-in for the ``pynvml`` module with the calls NvmlMeter makes."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    init_error: int | None = None
    read_error: int | None = None
    """NVML code raised by every reading call while set (e.g. 15, GPU is lost)."""
    inits: int = 0
    """Successful ``nvmlInit`` calls; each must be matched by one ``nvmlShutdown``."""
    shutdowns: int = 0
    NVMLError: type[Exception] = NVMLError
    NVML_TEMPERATURE_GPU: int = 0
    NVML_ERROR_NOT_SUPPORTED: int = 3

    def _check(self) -> None:
        if self.read_error is not None:
            raise NVMLError(self.read_error)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: FakeGpu) -> bytes:
        return h.name.encode()

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        self._check()
        if not h.counter_supported:
            raise NVMLError(3)
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._check()
        return h.power_mw

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        self._check()
        assert sensor == 0
        return h.temperature_c


# -- sysfs and /proc ----------------------------------------------------------------------


def write_zone(folder: Path, name: str, energy_uj: int, range_uj: int = 262_143_328_850) -> Path:
    """One powercap zone folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(name + "\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return folder


def rapl_tree(root: Path, *, psys: bool = True, mmio: bool = True) -> Path:
    """A two-package machine with DRAM zones, a core zone, psys and an MMIO duplicate."""
    for pkg in (0, 1):
        top = write_zone(root / f"intel-rapl:{pkg}", f"package-{pkg}", 10_000_000)
        write_zone(top / f"intel-rapl:{pkg}:0", "core", 5_000_000)
        write_zone(top / f"intel-rapl:{pkg}:1", "dram", 2_000_000)
    if psys:
        write_zone(root / "intel-rapl:2", "psys", 50_000_000)
    if mmio:
        write_zone(root / "intel-rapl-mmio:0", "package-0", 99_000_000)
    return root


def set_energy(zone: Path, energy_uj: int) -> None:
    """Move a zone's counter."""
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def denying_reader(denied: set[Path]) -> Callable[[Path], str]:
    """A sysfs reader for which ``denied`` files are unreadable, as for a non-root user."""

    def read(path: Path) -> str:
        if path in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text().strip()

    return read


PROC_STAT = """cpu  {busy} 0 0 {idle} 0 0 0 0 0 0
cpu0 1 0 0 1 0 0 0 0 0 0
cpu1 1 0 0 1 0 0 0 0 0 0
cpu2 1 0 0 1 0 0 0 0 0 0
cpu3 1 0 0 1 0 0 0 0 0 0
intr 1 2 3
ctxt 42
"""


def fake_proc(
    root: Path,
    model: str = "Intel(R) Xeon(R) Platinum 8480+",
    busy: int = 0,
    *,
    cpuinfo: str = "",
    mem_kib: int | None = None,
) -> Path:
    """A /proc with 4 CPUs: ``stat`` (busy jiffies in the user field), ``cpuinfo``
    (``cpuinfo`` adds lines such as ``flags``) and, with ``mem_kib``, ``meminfo``."""
    root.mkdir(parents=True, exist_ok=True)
    set_busy(root, busy)
    info = "".join(f"processor\t: {i}\nmodel name\t: {model}\n{cpuinfo}\n" for i in range(4))
    (root / "cpuinfo").write_text(info)
    if mem_kib is not None:
        (root / "meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree: 1 kB\n")
    return root


def set_busy(proc: Path, busy: int, idle: int = 1_000_000) -> None:
    """Set the total busy jiffies in a fake ``/proc/stat``."""
    (proc / "stat").write_text(PROC_STAT.format(busy=busy, idle=idle))


def runner_returning(output: str | Exception) -> Callable[[Any], str]:
    """An ipmitool runner that answers ``output`` (or raises it)."""
    calls: list[Any] = []

    def run(argv: Any) -> str:
        calls.append(list(argv))
        if isinstance(output, Exception):
            raise output
        return output

    run.calls = calls  # type: ignore[attr-defined]
    return run


@dataclass
class RecordingSink:
    """A :class:`~meters.poller.Sink` that keeps what the poller gives it, in order."""

    records: list[tuple[Meter, dict[str, Reading], str | None, float]] = field(default_factory=list)

    def record(
        self, meter: Meter, readings: Mapping[str, Reading], error: str | None, t_s: float
    ) -> None:
        """Keep one reading (or error)."""
        self.records.append((meter, dict(readings), error, t_s))

    def read_meter(self, meter: Meter) -> None:
        """Read ``meter`` now (for meters the poller reads on a thread of their own)."""
        before = time.monotonic()
        self.record(meter, meter.read(), None, (before + time.monotonic()) / 2.0)

    def powers_w(self) -> list[float | None]:
        """The ``machine`` power of every reading that has one, in order."""
        return [r["machine"].power_w for _, r, e, _ in self.records if e is None]

    def errors(self) -> list[str]:
        """Every error, in order."""
        return [e for _, _, e, _ in self.records if e is not None]


class DroppingMeter:
    """A Prometheus endpoint that drops the connection after every answer, without
    saying so (as a meter whose keep-alive timeout is shorter than the poll interval)."""

    def __init__(self, power_w: float) -> None:
        self.power_w = power_w
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/metrics"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                self.connections += 1
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
                body = f"wall_power_watts {self.power_w}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        """Stop serving."""
        self._server.close()
        self._thread.join(timeout=5)
