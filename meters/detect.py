"""Which meters this machine has, found once at start-up.

With ``meters.kinds = ["auto"]`` the order is NVML (GPUs), RAPL (CPU and
DRAM), then the whole-machine meters that are configured (a Prometheus URL,
``meters.ipmi``, a smart plug URL), and the estimate only when none of them
works. A list of kinds uses exactly those; if none of them works the estimate
stands in, with a warning. Each kind tried gives one log line saying what was
found or why not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from config import MeterSettings
from config.errors import MeterUnavailable
from meters.base import Activity, Meter, MeterAbsent
from meters.estimate import EstimateMeter
from meters.ipmi import IpmiMeter, Runner
from meters.nvml import NvmlMeter
from meters.plug import ShellyMeter, TasmotaMeter
from meters.prometheus import PrometheusMeter
from meters.rapl import RaplMeter

log = logging.getLogger("joulegate.meters")


@dataclass
class Detection:
    """The meters found and one line per kind tried."""

    meters: list[Meter] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class Hardware:
    """What detection talks to; tests pass fakes."""

    nvml: Any | None = None
    """A ``pynvml``-like module (None: import the real one)."""
    http_client: Callable[[], httpx.Client] | None = None
    """Makes the HTTP client of a Prometheus or plug meter."""
    ipmi_runner: Runner | None = None
    """Runs ``ipmitool`` (None: the real one)."""


def _wanted(settings: MeterSettings) -> tuple[list[str], bool]:
    if settings.kinds != ("auto",):
        return list(dict.fromkeys(settings.kinds)), False
    kinds = ["nvml", "rapl"]
    if settings.prometheus_url:
        kinds.append("prometheus")
    if settings.ipmi:
        kinds.append("ipmi")
    if settings.plug_url:
        kinds.append(settings.plug_kind)
    return kinds, True


def _build(kind: str, s: MeterSettings, hw: Hardware, activity: Activity) -> Meter:
    client = hw.http_client() if hw.http_client else None
    if kind == "nvml":
        return NvmlMeter(hw.nvml, s.gpu_indices)
    if kind == "rapl":
        return RaplMeter(s.rapl_root, psys=s.rapl_psys)
    if kind == "prometheus":
        if not s.prometheus_url:
            raise MeterUnavailable("meters.prometheus_url is not set")
        return PrometheusMeter(
            s.prometheus_url, s.prometheus_metric,
            labels=s.prometheus_labels, unit=s.prometheus_unit, client=client,
            temperature_metric=s.prometheus_temperature_metric,
        )  # fmt: skip
    if kind == "ipmi":
        return IpmiMeter(
            hw.ipmi_runner, host=s.ipmi_host, user=s.ipmi_user, password=s.ipmi_password
        )
    if kind in ("shelly", "tasmota"):
        if not s.plug_url:
            raise MeterUnavailable("meters.plug_url is not set")
        cls = ShellyMeter if kind == "shelly" else TasmotaMeter
        return cls(s.plug_url, client=client)
    if kind == "estimate":
        return EstimateMeter(
            proc_root=s.proc_root, dmi_root=s.dmi_root, cpu_tdp_w=s.cpu_tdp_w,
            gpu_board_power_w=s.gpu_board_power_w, activity=activity,
        )  # fmt: skip
    raise MeterUnavailable(f"unknown meter kind {kind!r}")  # pragma: no cover - settings check


def detect_meters(
    settings: MeterSettings,
    *,
    hardware: Hardware | None = None,
    activity: Activity | None = None,
) -> Detection:
    """Try each wanted kind in order (blocking: run it in a thread from async code)."""
    hw = hardware or Hardware()
    activity = activity or Activity()
    kinds, auto = _wanted(settings)
    found = Detection()

    def note(level: int, line: str) -> None:
        found.lines.append(line)
        log.log(level, "meter %s", line)

    for kind in kinds:
        if kind == "estimate" and auto:
            continue
        try:
            meter = _build(kind, settings, hw, activity)
        except MeterUnavailable as exc:
            # Absent hardware is normal; a permission problem or a configured meter
            # that fails is worth a warning.
            quiet = auto and isinstance(exc, MeterAbsent)
            note(logging.INFO if quiet else logging.WARNING, f"{kind}: not used ({exc})")
            continue
        found.meters.append(meter)
        note(logging.INFO, meter.describe())
        for skipped in getattr(meter, "skipped", []):
            note(logging.WARNING, f"{kind}: left out {skipped}")
    if not found.meters:
        if not auto and "estimate" not in kinds:
            log.warning("meter: none of %s works; estimating instead", ", ".join(kinds))
        try:
            meter = _build("estimate", settings, hw, activity)
        except MeterUnavailable as exc:
            note(logging.WARNING, f"estimate: not used ({exc}); energy will be null")
        else:
            found.meters.append(meter)
            note(logging.INFO, meter.describe())
    return found


def detect_remote_meters(
    settings: MeterSettings, kinds: Sequence[str], *, hardware: Hardware | None = None
) -> Detection:
    """Another host's meters: each of ``kinds`` (read over the network) that works,
    and no estimate, which would measure this host instead (blocking)."""
    hw = hardware or Hardware()
    found = Detection()
    for kind in kinds:
        try:
            meter = _build(kind, settings, hw, Activity())
        except MeterUnavailable as exc:
            found.lines.append(f"{kind}: not used ({exc})")
            log.warning("meter %s: not used (%s)", kind, exc)
            continue
        found.meters.append(meter)
        found.lines.append(meter.describe())
        log.info("meter %s", meter.describe())
    return found
