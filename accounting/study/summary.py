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
    energy: bool = False
    """An energy figure: its table says whether it is measured or estimated."""
    table: bool = True
    """Shown as a table of its own (else only in ``summary.json``)."""


def _per_token(r: StudyRow) -> float | None:
    if r.energy_j is None or not r.completion_tokens:
        return None
    return r.energy_j / r.completion_tokens


def _per_1000(r: StudyRow) -> float | None:
    return None if r.co2e_g is None else r.co2e_g * 1000.0


def _hit_cap(r: StudyRow) -> float | None:
    return None if r.finish_reason is None else float(r.finish_reason == "length")


METRICS: tuple[Metric, ...] = (
    Metric("energy_j", "Energy per request", "J", lambda r: r.energy_j, energy=True),
    Metric("energy_j_per_token", "Energy per output token", "J/token", _per_token, energy=True),
    Metric(
        "energy_dynamic_j",
        "Dynamic energy per request (above the idle baseline)",
        "J",
        lambda r: r.energy_dynamic_j,
        energy=True,
    ),
    Metric(
        "sci_g", "SCI per request (operational + embodied)", "g", lambda r: r.sci_g, table=False
    ),
    Metric(
        "sci_operational_g",
        "SCI operational part (E x I)",
        "g",
        lambda r: r.sci_operational_g,
        table=False,
    ),
    Metric("sci_embodied_g", "SCI embodied part (M)", "g", lambda r: r.sci_embodied_g, table=False),
    Metric(
        "co2e_g_per_1000_queries",
        "Operational gCO2e per 1,000 queries (embodied not included)",
        "g",
        _per_1000,
    ),
    Metric(
        "completion_tokens",
        "Output tokens",
        "tokens",
        lambda r: None if r.completion_tokens is None else float(r.completion_tokens),
    ),
    Metric("duration_s", "Duration", "s", lambda r: r.duration_s),
    Metric("energy_low_j", "Estimate's low energy", "J", lambda r: r.energy_low_j, table=False),
    Metric("energy_high_j", "Estimate's high energy", "J", lambda r: r.energy_high_j, table=False),
    Metric("hit_max_tokens", "Share of answers that hit max_tokens", "", _hit_cap, table=False),
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
    counts: dict[tuple[str, str], int]
    """(model, task) → requests in the cell."""
    estimated: str
    """``measured``, ``estimated``, ``partly estimated`` or ``no rows``."""

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
            "requests": [
                {"model": model, "task": task, "n": n} for (model, task), n in self.counts.items()
            ],
            "energy_figures": self.estimated,
            "energy_vs_tokens": {
                model: None
                if fit is None
                else {"slope_j_per_token": fit[0], "intercept_j": fit[1], "r2": fit[2]}
                for model, fit in self.fits.items()
            },
        }

    def energy_label(self) -> str:
        """What every energy table's title says: ``measured`` or ``estimated``."""
        return self.estimated

    def title(self, metric: Metric) -> str:
        """A table's title: the figure, its unit and, for energy, measured or estimated."""
        unit = f" ({metric.unit})" if metric.unit else ""
        return f"{metric.title}{unit}" + (f", {self.estimated}" if metric.energy else "")

    def grid(self, metric: Metric) -> tuple[list[str], list[list[str]]]:
        """Column names and rows (models) of one metric, cells ``mean ± half-width``."""
        head = [self.title(metric), *self.tasks]
        rows = []
        for model in self.models:
            cells = [model]
            for task in self.tasks:
                e = self.cell(metric.key, model, task)
                cells.append("-" if e is None else _pm(e))
            rows.append(cells)
        return head, rows

    def sci_split(self) -> tuple[list[str], list[list[str]]]:
        """SCI per request by model and task: operational and embodied side by side."""
        head = ["SCI per request (g)", "operational E x I", "embodied M", "total",
                "operational share"]  # fmt: skip
        rows = []
        for model in self.models:
            for task in self.tasks:
                op = self.cell("sci_operational_g", model, task)
                emb = self.cell("sci_embodied_g", model, task)
                total = self.cell("sci_g", model, task)
                share = "-"
                if op is not None and emb is not None and op.mean + emb.mean > 0:
                    share = f"{100 * op.mean / (op.mean + emb.mean):.0f}%"
                rows.append([f"{model} · {task}", *(_cell(e) for e in (op, emb, total)), share])
        return head, rows

    def operational_share(self) -> float | None:
        """Operational emissions as a share of the SCI over the whole study."""
        op = [e.mean * e.n for (k, _, _), e in self.cells.items() if k == "sci_operational_g"]
        emb = [e.mean * e.n for (k, _, _), e in self.cells.items() if k == "sci_embodied_g"]
        total = sum(op) + sum(emb)
        return None if not op or total <= 0 else sum(op) / total

    def cells_table(self) -> tuple[list[str], list[list[str]]]:
        """Per model and task: requests, and the share of answers that hit max_tokens."""
        head = ["Requests per cell (share that hit max_tokens)", *self.tasks]
        rows = []
        for model in self.models:
            cells = [model]
            for task in self.tasks:
                n = self.counts.get((model, task), 0)
                hit = self.cell("hit_max_tokens", model, task)
                cells.append(f"{n}" + ("" if hit is None else f" ({100 * hit.mean:.0f}%)"))
            rows.append(cells)
        return head, rows

    def range_table(self) -> tuple[list[str], list[list[str]]] | None:
        """The estimate's low-high energy per request (None when nothing is estimated)."""
        if not any(k == "energy_low_j" for k, _, _ in self.cells):
            return None
        head = ["Energy per request, estimate's range (J)", *self.tasks]
        rows = []
        for model in self.models:
            cells = [model]
            for task in self.tasks:
                lo = self.cell("energy_low_j", model, task)
                hi = self.cell("energy_high_j", model, task)
                cells.append(
                    "-" if lo is None or hi is None else f"{_num(lo.mean)}-{_num(hi.mean)}"
                )
            rows.append(cells)
        return head, rows

    def tables(self) -> list[tuple[list[str], list[list[str]]]]:
        """Every table, in the order the report shows them."""
        out = [self.grid(m) for m in METRICS if m.table]
        out.insert(3, self.sci_split())
        ranges = self.range_table()
        if ranges is not None:
            out.insert(1, ranges)
        out.append(self.cells_table())
        return out

    def to_text(self) -> str:
        """The tables as aligned text."""
        blocks = [render_table(head, rows, rules=True).rstrip("\n") for head, rows in self.tables()]
        return "\n\n".join(blocks) + "\n"

    def to_markdown(self) -> str:
        """The tables as Markdown."""
        out = [self.header, ""]
        for head, rows in self.tables():
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
    counts = {
        (model, task): sum(1 for r in rows if r.model == model and r.task == task)
        for model in models
        for task in tasks
    }
    return Summary(
        list(models), list(tasks), cells, header_line(rows), fits, counts, _measured(rows)
    )


def _measured(rows: Sequence[StudyRow]) -> str:
    if not rows:
        return "no rows"
    estimated = [r.estimated for r in rows]
    return (
        "estimated"
        if all(estimated)
        else "measured"
        if not any(estimated)
        else ("partly estimated")
    )


def header_line(rows: Sequence[StudyRow]) -> str:
    """Which meters, measured or estimated, the carbon source and intensity, the machine."""
    meters = sorted({r.meter for r in rows if r.meter}) or ["none"]
    kind = _measured(rows)
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


def _cell(e: Estimate | None) -> str:
    return "-" if e is None else _pm(e)


def _pm(e: Estimate) -> str:
    if e.n < 2 or math.isnan(e.half_width):
        return _num(e.mean)
    if e.half_width <= 1e-9 * abs(e.mean):  # identical values: float noise, not spread
        return f"{_num(e.mean)} ± 0"
    return f"{_num(e.mean)} ± {_num(e.half_width)}"


def _num(x: float) -> str:
    if x == 0 or math.isnan(x):
        return f"{x:g}"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"
