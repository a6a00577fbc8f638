"""The study's plots (matplotlib, Agg backend: no display needed), PNG and SVG.

Readable in colour and in grey: viridis (its lightness rises monotonically) for the
heatmap, with each label black or white by its cell's luminance; a hatch and a
marker per model besides its colour. A 95% interval that would reach below zero is
clipped at zero (energy cannot be negative) and the plot says so.

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

HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def label_colour(rgba: Sequence[float]) -> str:
    """``black`` on a light cell, ``white`` on a dark one (relative luminance, sRGB)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def clipped_errors(mean: float, half_width: float) -> tuple[float, float, bool]:
    """(below, above, clipped): the error bar's two arms, the lower one stopping at 0."""
    if math.isnan(mean) or math.isnan(half_width):
        return 0.0, 0.0, False
    below = min(half_width, max(0.0, mean))
    return below, half_width, below < half_width


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
    kind = summary.estimated
    # 1. SCI per request, model x task.
    grid = [[_mean(summary, "sci_g", m, t) for t in tasks] for m in models]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2.5, 0.8 * len(models) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(models)), models)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            rgba = image.cmap(float(image.norm(value)))  # type: ignore[arg-type]
            colour = "black" if math.isnan(value) else label_colour(tuple(rgba))
            ax.text(j, i, "-" if math.isnan(value) else f"{value:.3g}",
                    ha="center", va="center", color=colour, fontsize=8)  # fmt: skip
    fig.colorbar(image, ax=ax, label="SCI per request (g)")
    ax.set_title("Mean SCI per request (operational + embodied)")
    save(fig, "sci_heatmap")

    # 2. J per output token, bars per task, one per model, with 95% intervals.
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 3, 4))
    width = 0.8 / max(1, len(models))
    any_clipped = False
    for k, model in enumerate(models):
        means, below, above = [], [], []
        for task in tasks:
            e = summary.cell("energy_j_per_token", model, task)
            mean = math.nan if e is None else e.mean
            lo, hi, clipped = clipped_errors(mean, math.nan if e is None else e.half_width)
            any_clipped = any_clipped or clipped
            means.append(mean)
            below.append(lo)
            above.append(hi)
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, means, width, yerr=[below, above], capsize=3, label=model,
               hatch=HATCHES[k % len(HATCHES)], edgecolor="black", linewidth=0.6)  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"energy per output token (J/token), {kind}")
    title = "Energy per output token, mean and 95% CI"
    if any_clipped:
        title += "\n(intervals reaching below 0 are clipped at 0)"
    ax.set_title(title)
    # Below the axes: inside, the legend covered the first task's bars.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=max(1, len(models)),
              frameon=False)  # fmt: skip
    save(fig, "joules_per_token")

    # 3. SCI per request split into its operational and embodied parts.
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) * max(1, len(models)) / 2 + 3, 4))
    labels = [f"{m} · {t}" for m in models for t in tasks]
    op = [_mean(summary, "sci_operational_g", m, t) for m in models for t in tasks]
    emb = [_mean(summary, "sci_embodied_g", m, t) for m in models for t in tasks]
    xs = list(range(len(labels)))
    ax.bar(xs, op, 0.7, label="operational (E x I)", color="#3b528b", edgecolor="black",
           linewidth=0.6)  # fmt: skip
    ax.bar(xs, emb, 0.7, bottom=[0.0 if math.isnan(v) else v for v in op],
           label="embodied (M)", color="#fde725", hatch="//", edgecolor="black",
           linewidth=0.6)  # fmt: skip
    ax.set_xticks(xs, labels, fontsize=7, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_ylabel("SCI per request (g)")
    ax.set_title("SCI per request: operational and embodied parts")
    ax.legend()
    save(fig, "sci_split")

    # 3. Energy against output tokens, a fitted line per model.
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, model in enumerate(models):
        pts = [
            (r.completion_tokens, r.energy_j)
            for r in rows
            if r.model == model and r.completion_tokens is not None and r.energy_j is not None
        ]
        if not pts:
            continue
        dots = ax.scatter([x for x, _ in pts], [y for _, y in pts], s=14, alpha=0.7,
                          marker=MARKERS[k % len(MARKERS)])  # fmt: skip
        fit = summary.fits.get(model)
        label = model
        if fit is not None:
            slope, intercept, r2 = fit
            lo, hi = min(x for x, _ in pts), max(x for x, _ in pts)
            ax.plot(
                [lo, hi],
                [intercept + slope * lo, intercept + slope * hi],
                color=dots.get_facecolor()[0],
                linestyle=LINESTYLES[k % len(LINESTYLES)],
            )
            label = f"{model}: {slope:.3g} J/token + {intercept:.3g} J, R² = {r2:.3f}"
        dots.set_label(label)
    ax.set_xlabel("output tokens")
    ax.set_ylabel(f"energy per request (J), {kind}")
    ax.set_title("Energy against output tokens")
    ax.legend(fontsize=8)
    save(fig, "energy_vs_tokens")
    return out


def _mean(summary: Summary, key: str, model: str, task: str) -> float:
    e = summary.cell(key, model, task)
    return math.nan if e is None else e.mean
