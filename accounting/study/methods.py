"""A study's methods: how it was run and on what, so that a reader can judge and repeat it.

Gathered from the study's settings, its rows, what joulegate's ``/readyz`` said at
the first warm-up (meters, the machine, the carbon source and embodied model; kept
in ``joulegate.json``) and, for the demo, ``backends.json`` (model files, their
quantisation and sha256, the llama-server version and threads).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from accounting.study.dataset import StudyRow
from accounting.study.runner import Baseline, StudySettings
from accounting.study.stats import mean

JOULEGATE_FILE = "joulegate.json"
BACKENDS_FILE = "backends.json"


def load_json(path: Path) -> Any:
    """A JSON file of the study folder, None when absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _version() -> str:
    try:
        return metadata.version("joulegate")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _distinct(values: Sequence[str | None]) -> str:
    found = sorted({v for v in values if v})
    return "; ".join(found) if found else "none"


def _hardware(checks: dict[str, Any]) -> str:
    machine = checks.get("meters", {}).get("host")
    if not isinstance(machine, dict):
        return "not reported by joulegate (an older version, or /readyz unreadable)"
    gpus = machine.get("gpus") or []
    gpu = f"{len(gpus)} GPU ({', '.join(sorted(set(gpus)))})" if gpus else "no GPU found by NVML"
    kind = f"virtual machine ({machine['virtual']})" if machine.get("virtual") else "bare metal"
    return (
        f"CPU {machine.get('cpu_model') or 'model unknown'}, {machine.get('logical_cpus')} "
        f"logical CPUs, {machine.get('memory_gib')} GiB RAM, {gpu}; {kind}"
    )


def _backends(backends: Any) -> list[str]:
    if not isinstance(backends, list) or not backends:
        return [
            "backend: not recorded (the study ran against --url; joulegate does not report "
            "its backends' files): name the server, its version and threads, and the model "
            "files with their quantisation and hash yourself"
        ]
    return [
        f"backend of {b.get('model')}: {b.get('backend')} {b.get('backend_version')}, "
        f"{b.get('threads')} threads, {b.get('parallel')} slot; model file {b.get('file')} "
        f"({b.get('title')}, quantisation {b.get('quantisation')}, "
        f"{int(b.get('size_bytes', 0)) / 1e6:.1f} MB, sha256 {b.get('sha256')})"
        for b in backends
        if isinstance(b, dict)
    ]


def _energy(rows: Sequence[StudyRow], checks: dict[str, Any]) -> list[str]:
    meters = checks.get("meters", {})
    kinds = {r.estimated for r in rows}
    how = "estimated" if kinds == {True} else "measured" if kinds == {False} else "mixed"
    out = [f"meters: {_distinct([r.meter for r in rows])}; every energy figure is {how}"]
    dram = False
    if True in kinds:
        lows = [r.energy_low_j for r in rows if r.energy_low_j is not None]
        highs = [r.energy_high_j for r in rows if r.energy_high_j is not None]
        central = [r.energy_j for r in rows if r.energy_j is not None and r.estimated]
        model = _distinct([r.estimate_model for r in rows])
        if model == "none":
            model = str(meters.get("estimate_model") or "none")
        out.append(f"estimate model: {model}")
        dram = "W/GB" in model
        if lows and highs and central:
            out.append(
                f"estimate's range: energy per request {mean(central):.3g} J on average, "
                f"{mean(lows):.3g} J with the lowest plausible coefficients and "
                f"{mean(highs):.3g} J with the highest (per request in dataset.csv: "
                "energy_low_j, energy_high_j)"
            )
    if dram:
        out.append(
            "the estimate counts a constant DRAM line (0.392 W/GB x all the machine's "
            "memory) and the CPUs' idle draw in every request's energy; the dynamic "
            "energy table leaves the idle baseline out and is the fairer comparison"
        )
    return out


def methods(
    settings: StudySettings,
    rows: Sequence[StudyRow],
    baselines: Sequence[Baseline],
    checks: dict[str, Any],
    backends: Any,
    url: str,
) -> list[str]:
    """The methods, one statement a line."""
    s = settings
    carbon = checks.get("carbon", {})
    intensities = sorted({r.carbon_intensity_g_per_kwh for r in rows
                          if r.carbon_intensity_g_per_kwh is not None})  # fmt: skip
    embodied = _distinct([r.embodied_model for r in rows])
    if embodied == "none":
        embodied = str(carbon.get("embodied_model") or "none")
    out = [
        f"protocol: {len(s.models)} models x {len(s.tasks)} tasks x {s.prompts_per_task} "
        f"prompts x {s.repeats} repeats, max_tokens {s.max_tokens}, one request at a time "
        f"through joulegate at {url}; one uncounted warm-up request per model; each repeat "
        f"in an order shuffled with seed {s.seed}, the same for every model; "
        f"{s.cooldown_s:g} s cool-down between models; cells: mean and 95% interval "
        "(Student's t) over the cell's requests",
        *_energy(rows, checks),
        *(
            f"idle baseline before {b.model}: {b.idle_power_w} W ({b.meter}, read {b.read_at})"
            + (
                ""
                if b.busy_share is None
                else f", {100 * b.busy_share:.0f}% of the way from the estimate's idle "
                f"floor {b.floor_w} W to full load {b.full_w} W"
            )
            + (
                ""
                if b.cpu_busy_share is None
                else f"; CPUs {100 * b.cpu_busy_share:.0f}% busy over {b.cpu_probe_s:g} s, "
                "nothing sent"
            )
            for b in baselines
        ),
        f"carbon: {_distinct([r.carbon_source for r in rows])} at "
        f"{', '.join(f'{i:g}' for i in intensities) or '?'} gCO2e/kWh",
        f"embodied model: {embodied} (SCI's M: that total over the hardware's lifetime, "
        "charged for each request's duration)",
        f"hardware: {_hardware(checks)}",
        *_backends(backends),
        f"joulegate {_version()}, Python {sys.version.split()[0]}, "
        f"{platform.system()} {platform.release()} {platform.machine()}",
    ]
    return out
