"""The AI Energy Score's result files and star rating for one model's protocol run.

The files are the ones the rating's own tools write (read in the public repository
``huggingface/AIEnergyScore``: ``summarize_gpu_wh.py`` and ``results_aggregator.py``):

* ``GPU_ENERGY_WH.txt``: the run's GPU energy in Wh, two decimals and a newline;
* ``GPU_ENERGY_SUMMARY.json``: ``units`` (``Wh``), ``total``, ``format`` and the
  ``preprocess_wh``, ``prefill_wh`` and ``decode_wh`` phases (joulegate does not
  split phases: everything is in ``decode_wh``, as the rating's own
  ``ai_energy_benchmarks`` format does), plus a ``joulegate`` block with the rating;
* ``master_results.csv``: one row per model, the rating's 21 columns in its order.

The star scale is the leaderboard's: within a model class, the range from the
least to the most GPU energy per 1,000 queries is cut into five equal bands and
the lowest band gets 5 stars. The ranges ship as data
(``data/aienergyscore_leaderboard.jsonl``: each model of the leaderboard's text
generation task with its class, energy and stars, and the source and date), so
the rule is checked against every star the leaderboard published.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from config.units import J_PER_WH

MASTER_COLUMNS = (
    "model_name", "model_class", "task", "reasoning_state", "total_prompts",
    "successful_prompts", "failed_prompts", "total_duration_seconds", "avg_total_time",
    "avg_time_to_first_token", "total_tokens", "total_prompt_tokens",
    "total_completion_tokens", "throughput_tokens_per_second", "gpu_energy_wh",
    "wh_per_1000_queries", "co2_emissions_g", "tokens_per_joule", "avg_energy_per_prompt_wh",
    "timestamp", "error_message",
)  # fmt: skip
"""``master_results.csv``'s header, as the rating's aggregator writes it."""
MODEL_CLASSES = ("A", "B", "C")
"""Text generation's classes: A up to 20B parameters (one consumer GPU), B up to 66B
(one H100), C beyond (several H100s)."""


@dataclass(frozen=True, slots=True)
class Cohort:
    """One class's published range of GPU energy (Wh per 1,000 queries)."""

    model_class: str
    low_wh: float
    high_wh: float
    models: int
    leaderboard: str
    """Which leaderboard release (``2025-02``)."""
    source: str

    def stars(self, wh_per_1000_queries: float) -> int:
        """1 to 5 stars: five equal bands over the range, the lowest energy 5 stars;
        beyond the range, the end band it is nearest."""
        band = (self.high_wh - self.low_wh) / 5
        if band <= 0:
            return 5
        below = math.floor((wh_per_1000_queries - self.low_wh) / band)
        return 5 - min(4, max(0, below))


def leaderboard() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The shipped leaderboard: its source line and its models."""
    text = (
        resources.files("accounting.study")
        .joinpath("data/aienergyscore_leaderboard.jsonl")
        .read_text("utf-8")
    )
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return lines[0], lines[1:]


def cohorts() -> dict[str, Cohort]:
    """Each class's range, from the shipped leaderboard."""
    head, models = leaderboard()
    out: dict[str, Cohort] = {}
    for c in MODEL_CLASSES:
        wh = [m["wh_per_1000_queries"] for m in models if m["class"] == c]
        out[c] = Cohort(c, min(wh), max(wh), len(wh), head["leaderboard"], head["source"])
    return out


@dataclass(frozen=True, slots=True)
class RunTotals:
    """What one model's run measured, summed over its counted queries."""

    model: str
    model_class: str
    total_prompts: int
    successful_prompts: int
    duration_s: float
    """Wall time of the counted queries, end to end."""
    latency_s: float
    """Summed round trips of the successful queries."""
    prefill_s: float | None
    """Summed prompt processing of the backend (its ``timings``), if it reported it."""
    prompt_tokens: int
    completion_tokens: int
    gpu_energy_j: float
    co2e_g: float

    @property
    def gpu_energy_wh(self) -> float:
        """The run's energy in Wh."""
        return self.gpu_energy_j / J_PER_WH

    @property
    def wh_per_1000_queries(self) -> float:
        """The rating's figure: energy per successful query, times 1,000."""
        ok = self.successful_prompts
        return self.gpu_energy_wh / ok * 1000 if ok else 0.0

    @property
    def tokens_per_joule(self) -> float:
        """Prompt and completion tokens per joule, as the rating counts them."""
        tokens = self.prompt_tokens + self.completion_tokens
        return tokens / self.gpu_energy_j if self.gpu_energy_j > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Rating:
    """Where a run sits on the scale, and whether it may be compared."""

    stars: int
    cohort: Cohort
    comparable: bool
    reasons: tuple[str, ...]
    """Why it is not comparable (empty when it is)."""

    @property
    def label(self) -> str:
        """``comparable``, or ``indicative, not comparable: <reasons>``."""
        if self.comparable:
            return "comparable"
        return "indicative, not comparable: " + "; ".join(self.reasons)


def rate(totals: RunTotals, reasons: list[str]) -> Rating:
    """The run's stars in its class, comparable only when nothing in ``reasons``."""
    cohort = cohorts()[totals.model_class]
    return Rating(cohort.stars(totals.wh_per_1000_queries), cohort, not reasons, tuple(reasons))


def master_row(totals: RunTotals, when: dt.datetime) -> dict[str, str]:
    """The run's ``master_results.csv`` row (the rating's formats, column by column)."""
    t = totals
    failed = t.total_prompts - t.successful_prompts
    tokens = t.prompt_tokens + t.completion_tokens
    ok = max(1, t.successful_prompts)
    error = ""
    if failed:
        error = (f"PARTIAL FAILURE: {failed}/{t.total_prompts} prompts failed "
                 f"({100 * failed / t.total_prompts:.1f}%)")  # fmt: skip
    return {
        "model_name": t.model,
        "model_class": t.model_class,
        "task": "text_gen",
        "reasoning_state": "Off (N/A)",
        "total_prompts": str(t.total_prompts),
        "successful_prompts": str(t.successful_prompts),
        "failed_prompts": str(failed),
        "total_duration_seconds": f"{t.duration_s:.2f}",
        "avg_total_time": f"{t.latency_s / ok:.4f}",
        "avg_time_to_first_token": f"{(t.prefill_s or 0.0) / ok:.4f}",
        "total_tokens": str(tokens),
        "total_prompt_tokens": str(t.prompt_tokens),
        "total_completion_tokens": str(t.completion_tokens),
        "throughput_tokens_per_second": f"{tokens / t.duration_s if t.duration_s else 0.0:.2f}",
        "gpu_energy_wh": f"{t.gpu_energy_wh:.4f}",
        "wh_per_1000_queries": f"{t.wh_per_1000_queries:.4f}",
        "co2_emissions_g": f"{t.co2e_g:.4f}",
        "tokens_per_joule": f"{t.tokens_per_joule:.4f}",
        "avg_energy_per_prompt_wh": f"{t.gpu_energy_wh / ok:.4f}",
        "timestamp": when.isoformat(),
        "error_message": error,
    }


def write_results(
    folder: Path, totals: RunTotals, rating: Rating, notes: dict[str, Any], when: dt.datetime
) -> Path:
    """Write the model's files under ``folder/<model>/`` and append its
    ``master_results.csv`` row; the model's folder."""
    run = folder / totals.model.replace("/", "_")
    run.mkdir(parents=True, exist_ok=True)
    wh = totals.gpu_energy_wh
    (run / "GPU_ENERGY_WH.txt").write_text(f"{wh:.2f}\n", encoding="utf-8")
    summary = {
        "units": "Wh",
        "total": wh,
        "format": "joulegate",
        "preprocess_wh": 0.0,
        "prefill_wh": 0.0,
        "decode_wh": round(wh, 2),
        "joulegate": {
            "wh_per_1000_queries": totals.wh_per_1000_queries,
            "tokens_per_joule": totals.tokens_per_joule,
            "model_class": totals.model_class,
            "stars": rating.stars,
            "label": rating.label,
            "comparable": rating.comparable,
            "reasons": list(rating.reasons),
            "cohort": {
                "low_wh_per_1000_queries": rating.cohort.low_wh,
                "high_wh_per_1000_queries": rating.cohort.high_wh,
                "models": rating.cohort.models,
                "leaderboard": rating.cohort.leaderboard,
                "source": rating.cohort.source,
            },
            **notes,
        },
    }
    (run / "GPU_ENERGY_SUMMARY.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    master = folder / "master_results.csv"
    new = not master.exists()
    with master.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MASTER_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(master_row(totals, when))
    return run
