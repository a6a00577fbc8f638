"""What a study found, said first: the conclusion per task and the warnings.

The conclusion names, per task, the model with the least energy per request and per
output token, how many times less than the next model it used, and whether the two
95% intervals overlap (if they do, the study cannot tell the two apart at that
level). The warnings say what weakens the figures: cells with fewer than
:data:`MIN_REQUESTS` requests, an idle baseline or a CPU load that shows the machine
was busy before a model ran, and a model that hit ``max_tokens`` on most of its answers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from accounting.study.runner import Baseline
from accounting.study.stats import Estimate
from accounting.study.summary import Summary
from config.table import render_table

MIN_REQUESTS = 10
"""Fewer requests per cell than this and the 95% interval is too wide to lean on."""
BUSY_SHARE = 0.5
"""An idle baseline past this share of the way from the estimate's idle floor to its
full load means other work was running before the model did."""
CPU_BUSY_SHARE = 0.2
"""More of all CPUs' time busy than this, with the study sending nothing, means other
work was running on the machine (whatever the meter)."""
CAP_SHARE = 0.5
"""A model whose answers hit ``max_tokens`` more often than this was cut short."""
CRITERIA = (("energy_j", "energy per request", "J"),
            ("energy_j_per_token", "energy per output token", "J/token"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Winner:
    """The most efficient model of one task by one criterion."""

    task: str
    criterion: str
    unit: str
    best: str
    best_value: float
    runner_up: str | None
    ratio: float | None
    """The runner-up's mean over the best's (None with one model)."""
    overlap: bool | None
    """Whether the two 95% intervals overlap (None with one model or one request)."""


@dataclass(slots=True)
class Findings:
    """The conclusion table, its paragraph and the warnings."""

    winners: list[Winner] = field(default_factory=list)
    paragraph: str = ""
    warnings: list[str] = field(default_factory=list)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """One row per task: the winner per request and per token, ratio, overlap."""
        head = ["task", "least energy per request", "ratio to next", "95% CIs overlap",
                "least energy per output token", "ratio to next", "95% CIs overlap"]  # fmt: skip
        by_task: dict[str, list[str]] = {}
        for w in self.winners:
            cells = by_task.setdefault(w.task, [w.task])
            cells += [
                f"{w.best} ({_num(w.best_value)} {w.unit})",
                "-" if w.ratio is None else f"{w.ratio:.2f}x vs {w.runner_up}",
                "-" if w.overlap is None else "yes" if w.overlap else "no",
            ]
        return head, [cells for cells in by_task.values() if len(cells) == 7]

    def to_text(self) -> str:
        """The paragraph, its table and the warnings, for the terminal."""
        head, rows = self.table()
        parts = [textwrap.fill(self.paragraph, 100)]
        if rows:
            parts.append(render_table(head, rows, rules=True).rstrip("\n"))
        parts.extend(textwrap.fill(f"WARNING: {w}", 100) for w in self.warnings)
        return "\n\n".join(parts) + "\n"

    def to_json(self) -> dict[str, object]:
        """For ``summary.json``."""
        return {
            "conclusion": self.paragraph,
            "winners": [
                {
                    "task": w.task,
                    "criterion": w.criterion,
                    "best": w.best,
                    "best_mean": w.best_value,
                    "unit": w.unit,
                    "runner_up": w.runner_up,
                    "ratio": w.ratio,
                    "ci95_overlap": w.overlap,
                }
                for w in self.winners
            ],
            "warnings": self.warnings,
        }


def _winner(summary: Summary, task: str, key: str, label: str, unit: str) -> Winner | None:
    ranked = sorted(
        (
            (e.mean, model, e)
            for model in summary.models
            if (e := summary.cell(key, model, task)) is not None
        ),
        key=lambda t: t[0],
    )
    if not ranked:
        return None
    mean, best, e = ranked[0]
    if len(ranked) == 1:
        return Winner(task, label, unit, best, mean, None, None, None)
    next_mean, runner_up, f = ranked[1]
    ratio = next_mean / mean if mean > 0 else None
    return Winner(task, label, unit, best, mean, runner_up, ratio, _overlap(e, f))


def _overlap(a: Estimate, b: Estimate) -> bool | None:
    if a.n < 2 or b.n < 2:
        return None
    return a.high >= b.low and b.high >= a.low


def find(summary: Summary, baselines: Sequence[Baseline], max_tokens: int) -> Findings:
    """The conclusion and the warnings of a summarised study."""
    out = Findings()
    for task in summary.tasks:
        for key, label, unit in CRITERIA:
            w = _winner(summary, task, key, label, unit)
            if w is not None:
                out.winners.append(w)
    out.paragraph = _paragraph(summary, out.winners)
    out.warnings = _warnings(summary, baselines, max_tokens)
    return out


def _paragraph(summary: Summary, winners: Sequence[Winner]) -> str:
    if not winners:
        return "No request was measured: there is nothing to conclude."
    if len(summary.models) < 2:
        return (
            f"Only {summary.models[0] if summary.models else 'no model'} was measured, so "
            "no model can be named more efficient; the tables give its figures per task."
        )
    sentences = []
    for criterion in (c[1] for c in CRITERIA):
        ws = [w for w in winners if w.criterion == criterion]
        leaders: dict[str, list[Winner]] = {}
        for w in ws:
            leaders.setdefault(w.best, []).append(w)
        parts = []
        for model, won in sorted(leaders.items(), key=lambda kv: -len(kv[1])):
            ratios = [w.ratio for w in won if w.ratio is not None]
            clear = sum(1 for w in won if w.overlap is False)
            span = ""
            if ratios:
                lo, hi = f"{min(ratios):.2f}x", f"{max(ratios):.2f}x"
                how = lo if lo == hi else f"{lo} to {hi}"
                span = f"; the next model used {how} as much"
            parts.append(
                f"{model} in {len(won)} of {len(ws)} tasks ({', '.join(w.task for w in won)}"
                f"{span}; the 95% intervals are apart in {clear} of these)"
            )
        sentences.append(f"By {criterion}, the most efficient model was " + "; ".join(parts) + ".")
    share = summary.operational_share()
    if share is not None:
        sentences.append(
            f"Operational emissions make up {100 * share:.0f}% of the SCI, embodied "
            f"{100 * (1 - share):.0f}%."
        )
    sentences.append(
        f"Energy figures are {summary.estimated}; where the intervals overlap the study "
        "cannot tell the models apart at the 95% level."
    )
    return " ".join(sentences)


def _warnings(summary: Summary, baselines: Sequence[Baseline], max_tokens: int) -> list[str]:
    out = []
    small = {cell: n for cell, n in summary.counts.items() if 0 < n < MIN_REQUESTS}
    if small:
        fewest = min(small.values())
        out.append(
            f"{len(small)} of {len(summary.counts)} cells have fewer than {MIN_REQUESTS} "
            f"requests (the fewest: {fewest}): their 95% intervals are wide and the "
            "conclusion is weak; raise --prompts or --repeats."
        )
    for b in baselines:
        share, cpu = b.busy_share, b.cpu_busy_share
        if share is not None and share > BUSY_SHARE:
            out.append(
                f"the idle baseline before {b.model} read {b.idle_power_w:.3g} W, "
                f"{100 * share:.0f}% of the way from the estimate's idle floor "
                f"({b.floor_w:.3g} W) to full load ({b.full_w:.3g} W): the machine was busy "
                "with other work before the run, and every figure carries that load."
            )
        elif cpu is not None and cpu > CPU_BUSY_SHARE:
            out.append(
                f"before {b.model}'s first counted request, with nothing sent, the machine's "
                f"CPUs were {100 * cpu:.0f}% busy (idle baseline {b.idle_power_w:.3g} W, "
                f"{b.meter}): other work was running, and every figure carries that load."
            )
    for model in summary.models:
        hits = [
            (e.mean, e.n) for task in summary.tasks
            if (e := summary.cell("hit_max_tokens", model, task)) is not None
        ]  # fmt: skip
        n = sum(k for _, k in hits)
        if n and sum(m * k for m, k in hits) / n > CAP_SHARE:
            share = sum(m * k for m, k in hits) / n
            out.append(
                f"{model} hit max_tokens ({max_tokens}) on {100 * share:.0f}% of its answers: "
                "its energy per request is set by the cap more than by the task; compare "
                "energy per output token, or raise --max-tokens."
            )
    return out


def _num(x: float) -> str:
    return f"{x:.3g}"
