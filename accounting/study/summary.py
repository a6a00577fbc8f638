"""A study's results: per model and task, the mean of each figure with its 95% interval.

One :class:`Summary` is computed from the dataset's rows and rendered three
ways (terminal text, Markdown, JSON); every number in them is a mean of rows.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accounting.study.dataset import StudyRow
from accounting.study.stats import Estimate, confidence_interval, linear_fit
from config.table import render_table


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of the result grids: how to read it from a row, how to show it."""

    key: str
    title: str
    unit: str
    value: Callable[[StudyRow], float | None]


def _per_token(r: StudyRow) -> float | None:
    if r.energy_j is None or not r.completion_tokens:
        return None
    return r.energy_j / r.completion_tokens


def _per_1000(r: StudyRow) -> float | None:
    return None if r.co2e_g is None else r.co2e_g * 1000.0


METRICS: tuple[Metric, ...] = (
    Metric("sci_g", "SCI per request", "g", lambda r: r.sci_g),
    Metric("energy_j", "Energy per request", "J", lambda r: r.energy_j),
    Metric("energy_j_per_token", "Energy per output token", "J/token", _per_token),
    Metric("co2e_g_per_1000_queries", "gCO2e per 1,000 queries", "g", _per_1000),
    Metric(
        "completion_tokens",
        "Output tokens",
        "tokens",
        lambda r: None if r.completion_tokens is None else float(r.completion_tokens),
    ),
    Metric("duration_s", "Duration", "s", lambda r: r.duration_s),
)


@dataclass(slots=True)
class Summary:
    """Estimates per metric, model and task, and what the figures rest on."""

    models: list[str]
    tasks: list[str]
    cells: dict[tuple[str, str, str], Estimate]
    """(metric key, model, task) → mean and interval over that cell's rows."""
    header: str
    fits: dict[str, tuple[float, float, float] | None]
    """Per model: (slope J/token, intercept J, R²) of energy against output tokens."""

    def cell(self, metric: str, model: str, task: str) -> Estimate | None:
        """One estimate (None when the cell has no rows with that figure)."""
        return self.cells.get((metric, model, task))

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``summary.json``."""
        return {
            "header": self.header,
            "models": self.models,
            "tasks": self.tasks,
            "metrics": {
                m.key: {
                    "title": m.title,
                    "unit": m.unit,
                    "cells": [
                        {
                            "model": model,
                            "task": task,
                            "n": e.n,
                            "mean": e.mean,
                            "ci95_low": e.low,
                            "ci95_high": e.high,
                        }
                        for (key, model, task), e in self.cells.items()
                        if key == m.key
                    ],
                }
                for m in METRICS
            },
            "energy_vs_tokens": {
                model: None
                if fit is None
                else {"slope_j_per_token": fit[0], "intercept_j": fit[1], "r2": fit[2]}
                for model, fit in self.fits.items()
            },
        }

    def grid(self, metric: Metric) -> tuple[list[str], list[list[str]]]:
        """Column names and rows (models) of one metric, cells ``mean ± half-width``."""
        head = [f"{metric.title} ({metric.unit})", *self.tasks]
        rows = []
        for model in self.models:
            cells = [model]
            for task in self.tasks:
                e = self.cell(metric.key, model, task)
                cells.append("-" if e is None else _pm(e))
            rows.append(cells)
        return head, rows

    def to_text(self) -> str:
        """The grids as aligned text, after the header line."""
        blocks = [self.header]
        for m in METRICS:
            head, rows = self.grid(m)
            blocks.append(render_table(head, rows, rules=True).rstrip("\n"))
        return "\n\n".join(blocks) + "\n"

    def to_markdown(self) -> str:
        """The grids as Markdown tables (for the README and the report)."""
        out = [self.header, ""]
        for m in METRICS:
            head, rows = self.grid(m)
            out.append("| " + " | ".join(head) + " |")
            out.append("| --- " * len(head) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in rows)
            out.append("")
        return "\n".join(out)


def summarise(rows: Sequence[StudyRow], models: Sequence[str], tasks: Sequence[str]) -> Summary:
    """The study's grids from its rows (means and 95% t-intervals)."""
    cells: dict[tuple[str, str, str], Estimate] = {}
    for m in METRICS:
        for model in models:
            for task in tasks:
                values = [
                    v
                    for r in rows
                    if r.model == model and r.task == task
                    if (v := m.value(r)) is not None
                ]
                if values:
                    cells[(m.key, model, task)] = confidence_interval(values)
    fits: dict[str, tuple[float, float, float] | None] = {}
    for model in models:
        pts = [
            (float(r.completion_tokens), r.energy_j)
            for r in rows
            if r.model == model and r.completion_tokens is not None and r.energy_j is not None
        ]
        try:
            fit = linear_fit([x for x, _ in pts], [y for _, y in pts])
            fits[model] = (fit.slope, fit.intercept, fit.r2)
        except ValueError:
            fits[model] = None
    return Summary(list(models), list(tasks), cells, header_line(rows), fits)


def header_line(rows: Sequence[StudyRow]) -> str:
    """Which meters, measured or estimated, the carbon source and intensity, the machine."""
    meters = sorted({r.meter for r in rows if r.meter}) or ["none"]
    estimated = [r.estimated for r in rows]
    kind = (
        (
            "estimated"
            if all(estimated)
            else "measured"
            if not any(estimated)
            else "partly estimated"
        )
        if rows
        else "no rows"
    )
    sources = sorted({r.carbon_source for r in rows if r.carbon_source}) or ["none"]
    intensities = [
        r.carbon_intensity_g_per_kwh for r in rows if r.carbon_intensity_g_per_kwh is not None
    ]
    intensity = "?"
    if intensities:
        low, high = min(intensities), max(intensities)
        intensity = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    machine = f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs)"
    return (
        f"meters: {', '.join(meters)} ({kind}); carbon: {', '.join(sources)} at "
        f"{intensity} gCO2e/kWh; machine: {machine}; {len(rows)} requests; "
        "cells: mean ± 95% CI (t)"
    )


def _pm(e: Estimate) -> str:
    if e.n < 2 or math.isnan(e.half_width):
        return _num(e.mean)
    return f"{_num(e.mean)} ± {_num(e.half_width)}"


def _num(x: float) -> str:
    if x == 0 or math.isnan(x):
        return f"{x:g}"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"
