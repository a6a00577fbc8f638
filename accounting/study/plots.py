"""The study's plots (matplotlib, Agg backend: no display needed), PNG and SVG.

matplotlib is the optional ``study`` extra: without it :func:`draw_plots` returns
no files and the report says so; the tables and dataset do not need it.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

from accounting.study.dataset import StudyRow
from accounting.study.summary import Summary


def plots_available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def draw_plots(summary: Summary, rows: Sequence[StudyRow], folder: Path) -> list[Path]:
    """Draw the heatmap, the J/token bars and the energy-vs-tokens fits; the SVG paths."""
    if not plots_available():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []

    def save(fig: object, name: str) -> None:
        for suffix in ("png", "svg"):
            fig.savefig(folder / f"{name}.{suffix}", dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]
        out.append(folder / f"{name}.svg")

    models, tasks = summary.models, summary.tasks
    # 1. SCI per request, model x task.
    grid = [[_mean(summary, "sci_g", m, t) for t in tasks] for m in models]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2.5, 0.8 * len(models) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(models)), models)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                "-" if math.isnan(value) else f"{value:.3g}",
                ha="center",
                va="center",
                color="white",
                fontsize=8,
            )
    fig.colorbar(image, ax=ax, label="SCI per request (g)")
    ax.set_title("Mean SCI per request")
    save(fig, "sci_heatmap")

    # 2. J per output token, bars per task, one per model, with 95% intervals.
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 3, 4))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        means, errs = [], []
        for task in tasks:
            e = summary.cell("energy_j_per_token", model, task)
            means.append(math.nan if e is None else e.mean)
            errs.append(0.0 if e is None or math.isnan(e.half_width) else e.half_width)
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("energy per output token (J/token)")
    ax.set_title("Energy per output token, mean and 95% CI")
    ax.legend()
    save(fig, "joules_per_token")

    # 3. Energy against output tokens, a fitted line per model.
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for model in models:
        pts = [
            (r.completion_tokens, r.energy_j)
            for r in rows
            if r.model == model and r.completion_tokens is not None and r.energy_j is not None
        ]
        if not pts:
            continue
        dots = ax.scatter([x for x, _ in pts], [y for _, y in pts], s=12, alpha=0.6)
        fit = summary.fits.get(model)
        label = model
        if fit is not None:
            slope, intercept, r2 = fit
            lo, hi = min(x for x, _ in pts), max(x for x, _ in pts)
            ax.plot(
                [lo, hi],
                [intercept + slope * lo, intercept + slope * hi],
                color=dots.get_facecolor()[0],
            )
            label = f"{model}: {slope:.3g} J/token + {intercept:.3g} J, R² = {r2:.3f}"
        dots.set_label(label)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("energy per request (J)")
    ax.set_title("Energy against output tokens")
    ax.legend(fontsize=8)
    save(fig, "energy_vs_tokens")
    return out


def _mean(summary: Summary, key: str, model: str, task: str) -> float:
    e = summary.cell(key, model, task)
    return math.nan if e is None else e.mean
