"""``joulegate meters``: which meters this machine has, and a few seconds of live power."""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

from config.settings import MeterSettings
from meters.detect import detect_meters
from meters.sampler import Sampler, total_components


def register(sub: Any) -> None:
    """Add the ``meters`` sub-command to the ``joulegate`` parser."""
    p = sub.add_parser("meters", help="show the power meters found and live readings in W")
    p.add_argument("--config", type=Path, help="TOML settings file (default: ./joulegate.toml)")
    p.add_argument(
        "--seconds", type=float, default=5.0, help="how long to show live readings (default 5)"
    )
    p.set_defaults(handler=run)


def _cell(value: float | None) -> str:
    return f"{value:9.1f}" if value is not None else f"{'-':>9}"


def run(args: argparse.Namespace) -> int:
    """Detect the meters, then print one line of power per second."""
    from proxy.cli import settings_from  # the CLI package imports this module

    settings = settings_from(args).meters
    # Detection's log lines are printed below; keep the logger from repeating them.
    logger = logging.getLogger("joulegate.meters")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return _show(settings, args.seconds)
    finally:
        logger.setLevel(level)


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
        started = time.monotonic()
        for i in range(1, max(1, math.ceil(seconds)) + 1):
            time.sleep(max(0.0, started + i - time.monotonic()))
            power = sampler.power_w(1.0)
            parts = [power.get(c) for c in whole]
            total = None if any(p is None for p in parts) else sum(p or 0.0 for p in parts)
            cells = " ".join(_cell(power.get(c)) for c in comps)
            print(f"{i:6d} {cells} {_cell(total)}", flush=True)
        for name, reason in sampler.failing().items():
            print(f"{name} is failing: {reason}")
    finally:
        sampler.close()
    return 0
