"""``joulegate bench --protocol ai-energy-score``: the AI Energy Score's text generation run.

The AI Energy Score (Hugging Face and partners; ``huggingface/AIEnergyScore``) rates
a model's inference energy on its text generation task as GPU energy per 1,000
queries: 1,000 inputs of its dataset (``EnergyStarAI/text_generation``), batch size
1, exactly 10 output tokens each (``min_new_tokens = max_new_tokens = 10``), on one
NVIDIA H100 with GPU energy read from NVML. This command runs that protocol through
joulegate, per model:

1. one warm-up query, not counted;
2. ``--prompts`` queries (default 1,000), one at a time, each a ``POST
   /v1/completions`` of the input as the prompt with ``max_tokens`` 10, tagged
   ``text_generation``; where the backend can be told to ignore the end token
   (llama.cpp's server and vLLM accept ``ignore_eos``; their ``/v1/models`` says
   ``owned_by`` ``llamacpp`` or ``vllm``) it is, so every answer is 10 tokens;
3. the energy of each answer: its ``gpu`` component where an NVML meter gives one,
   else the request's whole energy (and the run says so).

The inputs come from ``--prompt-file`` (JSON lines or CSV with a ``text`` or
``prompt`` field: the rating's dataset exported with ``datasets``, for example),
else a small sample bundled for the demo (``data/aienergyscore_sample.jsonl``,
written for joulegate in the manner of the rating's sources; *not* its dataset).
The result files and the star rating are :mod:`~accounting.study.aienergyscore_rating`'s.
A run is labelled **comparable** only when it matches the rating: one H100 (several
for class C) metered by NVML, every answer exactly 10 tokens and alone on the
machine, 1,000 queries of a given input file, none failed; otherwise **indicative,
not comparable** with each reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import platformdirs

from accounting.study.aienergyscore_rating import (
    MODEL_CLASSES,
    RunTotals,
    rate,
    write_results,
)
from accounting.study.runner import Progress, StudyClient, check_models
from config.errors import StudyAborted, StudyError
from proxy.task import TASK_HEADER

PROTOCOL = "ai-energy-score"
QUERIES = 1000
"""The rating's queries per model."""
OUTPUT_TOKENS = 10
"""The rating's output tokens per query, exactly."""
TASK = "text_generation"
IGNORE_EOS_OWNERS = frozenset({"llamacpp", "vllm"})
"""``owned_by`` of the servers that accept ``ignore_eos``."""
DATASET = "EnergyStarAI/text_generation"
_NVML = re.compile(r"nvml: (\d+) GPUs? \(([^)]*)\)")
_NOT_HERE = ("repeats", "tasks", "max_tokens", "seed", "cooldown_s")
Joulegate = Callable[[argparse.Namespace, Path], contextlib.AbstractContextManager[str]]
"""Gives the URL of the joulegate to measure (``--url``, or the demo it starts)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--protocol`` and ``--model-class`` on ``joulegate bench``."""
    p.add_argument(
        "--protocol", choices=("study", PROTOCOL), default="study",
        help="study (default), or the AI Energy Score's text generation run",
    )  # fmt: skip
    p.add_argument(
        "--model-class", choices=MODEL_CLASSES, default="A",
        help="ai-energy-score: the rating's size class (A <= 20B parameters, B <= 66B, "
        "C beyond; default A)",
    )  # fmt: skip


def load_inputs(path: Path | None) -> list[str]:
    """The inputs: ``path``'s ``text`` (or ``prompt``) fields, else the bundled sample."""
    if path is None:
        text = (
            resources.files("accounting.study")
            .joinpath("data/aienergyscore_sample.jsonl")
            .read_text("utf-8")
        )
        where = "the bundled sample"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StudyError(f"--prompt-file {path}: cannot read it ({exc})") from None
        where = f"--prompt-file {path}"
    if path is not None and path.suffix.lower() == ".csv":
        rows: list[tuple[int, Any]] = [(i + 2, r) for i, r in
                                       enumerate(csv.DictReader(io.StringIO(text)))]  # fmt: skip
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise StudyError(f"{where} line {number}: not JSON ({exc.msg})") from None
    inputs = []
    for number, row in rows:
        value = row.get("text", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise StudyError(f"{where} line {number}: no text (or prompt) in it")
        inputs.append(value)
    if not inputs:
        raise StudyError(f"{where}: no inputs in it")
    return inputs


@dataclass
class _Tally:
    """One model's counted queries, as they come."""

    sent: int = 0
    ok: int = 0
    latency_s: float = 0.0
    prefill_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    energy_j: float = 0.0
    co2e_g: float = 0.0
    not_ten: int = 0
    not_nvml: int = 0
    shared: int = 0
    meters: set[str] = field(default_factory=set)
    first_error: str | None = None

    def add(self, answer: dict[str, Any], latency_s: float) -> None:
        """Count one answered query."""
        energy: dict[str, Any] = answer.get("energy") or {}
        usage: dict[str, Any] = answer.get("usage") or {}
        gpu = (energy.get("components") or {}).get("gpu") or {}
        if gpu.get("meter") == "nvml" and not gpu.get("estimated") and gpu.get("energy_j"):
            self.energy_j += float(gpu["energy_j"])
        else:
            self.not_nvml += 1
            self.energy_j += float(energy.get("energy_j") or 0.0)
        self.meters.add(f"{energy.get('meter')}{' (estimated)' if energy.get('estimated') else ''}")
        self.co2e_g += float(energy.get("co2e_g") or 0.0)
        completion = int(usage.get("completion_tokens") or 0)
        self.not_ten += completion != OUTPUT_TOKENS
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += completion
        self.shared += energy.get("exclusive") is False
        prompt_ms = (answer.get("timings") or {}).get("prompt_ms")
        if isinstance(prompt_ms, int | float):
            self.prefill_s = (self.prefill_s or 0.0) + prompt_ms / 1000.0
        self.ok += 1
        self.latency_s += latency_s


async def _query(
    http: httpx.AsyncClient, auth: dict[str, str], model: str, text: str, ignore_eos: bool
) -> tuple[int, Any, float]:
    body: dict[str, Any] = {"model": model, "prompt": text, "max_tokens": OUTPUT_TOKENS}
    if ignore_eos:
        body["ignore_eos"] = True
    start = time.perf_counter()
    try:
        r = await http.post("/v1/completions", json=body, headers={**auth, TASK_HEADER: TASK})
        answer = r.json()
    except httpx.HTTPError as exc:
        raise StudyAborted(f"joulegate stopped answering ({type(exc).__name__}: {exc})") from exc
    except ValueError:
        answer = None
    return r.status_code, answer, time.perf_counter() - start


async def _hardware(http: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    """The meters' descriptions from ``/readyz`` (``nvml: 1 GPU (NVIDIA H100 …), …``)."""
    try:
        checks = (await http.get("/readyz", headers=auth)).json().get("checks", [])
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    for check in checks:
        if isinstance(check, dict) and check.get("name") == "meters":
            return [str(d) for d in check.get("devices") or []]
    return []


def hardware_reasons(devices: list[str], model_class: str) -> list[str]:
    """Why the metered hardware is not the rating's (one H100; several for class C)."""
    for d in devices:
        if m := _NVML.search(d):
            count, names = int(m[1]), m[2]
            out = []
            if "H100" not in names:
                out.append(f"the GPU is {names}, not the rating's NVIDIA H100")
            if model_class != "C" and count != 1:
                out.append(f"{count} GPUs metered, the rating's class {model_class} uses one")
            return out
    return ["no NVIDIA GPU metered by NVML (the rating measures one H100's GPU energy)"]


async def measure_model(
    http: httpx.AsyncClient, auth: dict[str, str], model: str, owned_by: str | None,
    inputs: list[str], progress: Progress,
) -> tuple[_Tally, float, bool]:  # fmt: skip
    """Warm up, then send every input once; the tally, the wall time and ignore_eos."""
    ignore_eos = owned_by in IGNORE_EOS_OWNERS
    await _query(http, auth, model, inputs[0], ignore_eos)  # warm-up, not counted
    tally = _Tally()
    started = time.perf_counter()
    for text in inputs:
        progress.step(model, TASK)
        status, answer, latency_s = await _query(http, auth, model, text, ignore_eos)
        tally.sent += 1
        if status == 200 and isinstance(answer, dict):
            tally.add(answer, latency_s)
        elif tally.first_error is None:
            tally.first_error = f"{status} {str(answer)[:200]}"
        progress.advance()
    return tally, time.perf_counter() - started, ignore_eos


def run_reasons(tally: _Tally, queries: int, from_file: bool) -> list[str]:
    """Why a run's protocol is not the rating's."""
    out = []
    if tally.not_nvml:
        meters = ", ".join(sorted(tally.meters))
        out.append(f"{tally.not_nvml} of {tally.ok} answers have no NVML GPU energy: the "
                   f"figure is joulegate's energy from {meters}")  # fmt: skip
    if tally.not_ten:
        out.append(f"{tally.not_ten} of {tally.ok} answers were not exactly {OUTPUT_TOKENS} "
                   "tokens (the backend was not told to ignore the end token)")  # fmt: skip
    if tally.shared:
        out.append(f"{tally.shared} answers overlapped other requests (the rating runs alone)")
    if queries != QUERIES:
        out.append(f"{queries} queries, not the rating's {QUERIES:,}")
    if not from_file:
        out.append(f"the bundled sample inputs, not the rating's dataset ({DATASET})")
    if tally.ok < tally.sent:
        out.append(f"{tally.sent - tally.ok} queries failed (first: {tally.first_error})")
    return out


def default_folder() -> Path:
    """Where results go without ``--out``: the user's data directory, never the cwd."""
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    return platformdirs.user_data_path("joulegate") / "bench" / f"ai-energy-score-{stamp}"


def check_arguments(args: argparse.Namespace) -> None:
    """StudyError for a flag the protocol fixes or does not have."""
    for name in _NOT_HERE:
        if getattr(args, name, None) is not None:
            raise StudyError(f"--{name.replace('_', '-')} does not apply to --protocol {PROTOCOL}"
                             f" (batch 1, {OUTPUT_TOKENS} output tokens, one pass)")  # fmt: skip
    if args.resume:
        raise StudyError(f"--resume does not apply to --protocol {PROTOCOL}")
    if args.prompts is not None and args.prompts < 1:
        raise StudyError("--prompts must be at least 1")


async def run(
    url: str, args: argparse.Namespace, inputs: list[str], folder: Path, progress: Progress
) -> list[str]:
    """Run the protocol on every model at ``url``; a line per model to print."""
    auth = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    lines = []
    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        client = StudyClient(http, api_key=args.api_key)
        served = await client.models()
        models = [m.strip() for m in (args.models or "").split(",") if m.strip()] or served
        await check_models(client, models)
        owners = {e.get("id"): e.get("owned_by") for e in
                  (await http.get("/v1/models", headers=auth)).json().get("data", [])}  # fmt: skip
        devices = await _hardware(http, auth)
        progress.start(len(models) * len(inputs))
        try:
            for model in models:
                tally, wall_s, ignore_eos = await measure_model(
                    http, auth, model, owners.get(model), inputs, progress
                )
                lines.append(_finish(folder, args, model, tally, wall_s, ignore_eos, devices,
                                     len(inputs)))  # fmt: skip
        finally:
            progress.close()
    return lines


def _finish(
    folder: Path, args: argparse.Namespace, model: str, tally: _Tally, wall_s: float,
    ignore_eos: bool, devices: list[str], queries: int,
) -> str:  # fmt: skip
    totals = RunTotals(model, args.model_class, tally.sent, tally.ok, wall_s, tally.latency_s,
                       tally.prefill_s, tally.prompt_tokens, tally.completion_tokens,
                       tally.energy_j, tally.co2e_g)  # fmt: skip
    reasons = hardware_reasons(devices, args.model_class)
    reasons += run_reasons(tally, queries, args.prompt_file is not None)
    rating = rate(totals, reasons)
    notes = {"protocol": PROTOCOL, "queries": queries, "output_tokens": OUTPUT_TOKENS,
             "ignore_eos_sent": ignore_eos, "inputs": str(args.prompt_file or "bundled sample"),
             "meters": sorted(tally.meters), "hardware": devices}  # fmt: skip
    write_results(folder, totals, rating, notes, dt.datetime.now(dt.UTC))
    c = rating.cohort
    return (f"{model}: {totals.wh_per_1000_queries:.4g} Wh per 1,000 queries, "
            f"{totals.tokens_per_joule:.4g} tokens/J: {'★' * rating.stars}"
            f"{'☆' * (5 - rating.stars)} ({rating.stars} of 5) in class {c.model_class} of the "
            f"{c.leaderboard} leaderboard ({c.low_wh:.4g} to {c.high_wh:.4g} Wh per 1,000 "
            f"queries)\n  {rating.label}")  # fmt: skip


def bench_protocol(args: argparse.Namespace, joulegate: Joulegate, progress: Progress) -> int:
    """Run the protocol (``joulegate`` yields the URL); 0 when done, 1 when stopped."""
    check_arguments(args)
    folder: Path = args.out or default_folder()
    if (folder / "master_results.csv").exists():
        raise StudyError(f"{folder} already holds results: pass another --out")
    inputs = load_inputs(args.prompt_file)
    wanted = QUERIES if args.prompts is None else args.prompts
    if wanted > len(inputs):
        print(f"joulegate bench: {wanted} queries asked, the inputs have {len(inputs)}: "
              f"running {len(inputs)}", file=sys.stderr)  # fmt: skip
    inputs = inputs[:wanted]
    try:
        with joulegate(args, folder) as url:
            lines = asyncio.run(run(url, args, inputs, folder, progress))
    except (StudyAborted, KeyboardInterrupt) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"joulegate bench: stopped: {why}", file=sys.stderr)
        return 1
    print(f"AI Energy Score protocol (text generation, batch 1, {OUTPUT_TOKENS} output tokens),"
          f" {len(inputs)} queries per model")  # fmt: skip
    print("\n".join(lines))
    print(f"results in {folder}/ (master_results.csv; per model GPU_ENERGY_WH.txt, "
          "GPU_ENERGY_SUMMARY.json)")  # fmt: skip
    return 0
