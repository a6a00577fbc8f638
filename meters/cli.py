"""``joulegate meters``: which meters this machine has, and a few seconds of live power."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from config import MeterSettings
from config.cli import add_config_option, settings_from
from meters.detect import detect_meters
from meters.sampler import Sampler
from meters.window import total_components


def register(sub: Any) -> None:
    """Add the ``meters`` sub-command to the ``joulegate`` parser."""
    p = sub.add_parser("meters", help="show the power meters found and live readings in W")
    add_config_option(p)
    p.add_argument(
        "--seconds", type=float, default=5.0, help="how long to show live readings (default 5)"
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="live lines (default) or, at the end, one JSON object for scripts",
    )
    p.set_defaults(handler=run)


def _cell(value: float | None) -> str:
    return f"{value:9.1f}" if value is not None else f"{'-':>9}"


def run(args: argparse.Namespace) -> int:
    """Detect the meters, then print one line of power per second."""
    settings = settings_from(args).meters
    # Detection's log lines are printed below; keep the logger from repeating them.
    logger = logging.getLogger("joulegate.meters")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        if args.format == "json":
            report, code = _measure(settings, args.seconds)
            print(json.dumps(report, indent=2))
            return code
        return _show(settings, args.seconds)
    finally:
        logger.setLevel(level)


def _readings(
    sampler: Sampler, seconds: float
) -> Iterator[tuple[int, dict[str, float | None], float | None]]:
    """Once a second: the second's number, power by component and the total in W."""
    whole = total_components(sampler.components)
    started = time.monotonic()
    for i in range(1, max(1, math.ceil(seconds)) + 1):
        time.sleep(max(0.0, started + i - time.monotonic()))
        power = sampler.power_w(1.0)
        parts = [power.get(c) for c in whole]
        total = None if any(p is None for p in parts) else sum(p or 0.0 for p in parts)
        yield i, power, total


def _show(settings: MeterSettings, seconds: float) -> int:
    found = detect_meters(settings)
    print("meters found (in detection order):")
    for line in found.lines:
        print(f"  {line}")
    sampler = Sampler(found.meters, sample_hz=settings.sample_hz, external_hz=settings.external_hz)
    for line in sampler.ignored:
        print(f"  ignoring {line}")
    if not sampler.components:
        print("no meter works on this machine")
        return 1
    sampler.start()
    try:
        comps = sampler.components
        whole = total_components(comps)
        label = "estimated " if sampler.estimated else ""
        print(f"\nlive {label}power in W ({sampler.label}; total = {' + '.join(whole)}):")
        print(f"{'t (s)':>6} " + " ".join(f"{c:>9}" for c in comps) + f" {'total':>9}")
        for i, power, total in _readings(sampler, seconds):
            cells = " ".join(_cell(power.get(c)) for c in comps)
            print(f"{i:6d} {cells} {_cell(total)}", flush=True)
        for name, reason in sampler.failing().items():
            print(f"{name} is failing: {reason}")
    finally:
        sampler.close()
    return 0


def _measure(settings: MeterSettings, seconds: float) -> tuple[dict[str, Any], int]:
    """What ``_show`` prints, as one JSON object: the meters found, then one reading of
    power in W per second (``null`` where not known)."""
    found = detect_meters(settings)
    sampler = Sampler(found.meters, sample_hz=settings.sample_hz, external_hz=settings.external_hz)
    report: dict[str, Any] = {
        "found": list(found.lines),
        "ignored": list(sampler.ignored),
        "meter": sampler.label,
        "estimated": sampler.estimated,
        "components": list(sampler.components),
        "total_components": list(total_components(sampler.components)),
        "readings": [],
        "failing": {},
    }
    if not sampler.components:
        return report, 1
    sampler.start()
    try:
        for i, power, total in _readings(sampler, seconds):
            report["readings"].append(
                {"t_s": i, "power_w": {c: power.get(c) for c in sampler.components},
                 "total_w": total}
            )  # fmt: skip
        report["failing"] = dict(sampler.failing())
    finally:
        sampler.close()
    return report, 0
