"""``joulegate bench``: which model is most efficient for which task, request by request.

Without ``--url`` the command starts the demo (both demo models behind joulegate,
the ledger in the study folder) through the ``start_demo`` the composition root
hands to :func:`register`; with ``--url`` it measures any running joulegate.
Bad input (unknown model or task, a malformed prompt file, clashing flags) raises
:class:`~config.errors.StudyError`, one line and exit status 2; a run that could
not finish prints why and exits 1, keeping its dataset for ``--resume``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import platformdirs
from tqdm import tqdm

from accounting.study.aienergyscore import PROTOCOL, add_arguments, bench_protocol
from accounting.study.dataset import Dataset
from accounting.study.findings import Findings, find
from accounting.study.host_load import PROBE_S, CpuLoad, cpu_load_for
from accounting.study.methods import BACKENDS_FILE, JOULEGATE_FILE, load_json, methods
from accounting.study.plots import draw_plots, plots_available
from accounting.study.prompts import Prompt, bundled_prompts, load_prompt_file, select
from accounting.study.report import write_report
from accounting.study.runner import (
    Progress,
    RunStats,
    StudyClient,
    StudySettings,
    check_models,
    run_study,
)
from accounting.study.summary import Summary, summarise
from config.cli import add_config_option
from config.errors import StudyAborted, StudyError

DemoStarter = Callable[[argparse.Namespace, Path], contextlib.AbstractContextManager[str]]
"""Starts the demo models behind joulegate (ledger in the given folder); yields its URL."""

_SETTINGS_FILE = "study.json"
_DEFAULTS = {"prompts": 50, "repeats": 3, "max_tokens": 128, "seed": 0, "cooldown_s": 0.0}


class BarProgress(Progress):
    """A tqdm bar on standard error: model, task, requests done and time left."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None

    def start(self, total: int) -> None:
        """Open the bar."""
        self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)

    def step(self, model: str, task: str) -> None:
        """Show what is being measured."""
        if self._bar is not None:
            self._bar.set_description(f"{model} · {task}", refresh=False)

    def advance(self) -> None:
        """One more request done."""
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()


def register(sub: Any, *, start_demo: DemoStarter | None = None) -> None:
    """Add ``joulegate bench``."""
    p = sub.add_parser(
        "bench",
        help="compare models per task: energy, SCI and CO2e per request, with 95%% CIs",
        description="Send task-tagged prompts through joulegate, one at a time, and report "
        "each model's energy and SCI per task (tables, dataset, plots, report).",
    )
    add_config_option(p, "TOML settings for the demo's joulegate")
    p.add_argument("--url", help="a running joulegate (default: start the demo)")
    p.add_argument("--api-key", help="joulegate key (keys auth mode)")
    p.add_argument("--models", help="comma-separated models (default: all it serves)")
    p.add_argument("--tasks", help="comma-separated tasks (default: all in the prompts)")
    p.add_argument("--prompts", type=int, help="prompts per task (default 50)")
    p.add_argument("--repeats", type=int, help="passes over the prompts (default 3)")
    p.add_argument("--max-tokens", type=int, help="max_tokens per request (default 128)")
    p.add_argument("--seed", type=int, help="seed of the per-repeat shuffle (default 0)")
    p.add_argument("--prompt-file", type=Path, help="JSONL or CSV: task, prompt[, max_tokens]")
    p.add_argument(
        "--out",
        type=Path,
        help="study folder (default: bench/<time> in joulegate's user data folder)",
    )
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument("--cooldown-s", type=float, help="sleep between models (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--load-probe-s",
        type=float,
        default=PROBE_S,
        help=f"watch this machine's CPUs for S s before each model, nothing sent, to warn "
        f"when other work runs (default {PROBE_S:g}; 0: off; only when joulegate runs here)",
    )
    add_arguments(p)  # --protocol ai-energy-score: accounting.study.aienergyscore
    p.set_defaults(handler=lambda args: bench(args, start_demo=start_demo))


def study_settings(args: argparse.Namespace, folder: Path) -> StudySettings:
    """The study's settings: from the flags, or from ``study.json`` when resuming."""
    given = {k: getattr(args, k) for k in _DEFAULTS if getattr(args, k) is not None}
    models = _names(args.models)
    tasks = _names(args.tasks)
    prompt_file = str(args.prompt_file) if args.prompt_file else None
    if args.resume:
        saved = _load_settings(folder)
        asked = {
            "models": tuple(models) or None,
            "tasks": tuple(tasks) or None,
            "prompt_file": prompt_file,
            "prompts": given.get("prompts"),
            "repeats": given.get("repeats"),
            "max_tokens": given.get("max_tokens"),
            "seed": given.get("seed"),
            "cooldown_s": given.get("cooldown_s"),
        }
        for flag, value in asked.items():
            name = "prompts_per_task" if flag == "prompts" else flag
            have = getattr(saved, name)
            if value is not None and value != have:
                raise StudyError(
                    f"--{flag.replace('_', '-')} {value} differs from the study in {folder} "
                    f"({have}); drop it to resume, or start a new study"
                )
        return saved
    values = {**_DEFAULTS, **given}
    for flag in ("prompts", "repeats", "max_tokens"):
        if values[flag] < 1:
            raise StudyError(f"--{flag.replace('_', '-')} must be at least 1")
    if values["cooldown_s"] < 0:
        raise StudyError("--cooldown-s must be 0 or more")
    return StudySettings(
        models=tuple(models),
        tasks=tuple(tasks),
        prompts_per_task=int(values["prompts"]),
        repeats=int(values["repeats"]),
        max_tokens=int(values["max_tokens"]),
        seed=int(values["seed"]),
        prompt_file=prompt_file,
        cooldown_s=float(values["cooldown_s"]),
    )


def study_prompts(settings: StudySettings) -> list[Prompt]:
    """The prompts the study sends (StudyError for an unknown task or a bad file)."""
    if settings.prompt_file:
        pool = load_prompt_file(Path(settings.prompt_file))
    else:
        pool = bundled_prompts()
    return select(pool, settings.tasks or None, settings.prompts_per_task)


def bench(args: argparse.Namespace, *, start_demo: DemoStarter | None = None) -> int:
    """Run (or resume) a study; 0 when it finished, 1 when it stopped early."""
    if getattr(args, "protocol", None) == PROTOCOL:
        progress = Progress() if args.no_progress else BarProgress()
        return bench_protocol(args, lambda a, f: _joulegate(a, f, start_demo), progress)
    folder: Path = args.out or default_folder()
    if args.resume and args.out is None:
        raise StudyError("--resume needs --out DIR, the folder of the study to continue")
    if not args.resume and (folder / "dataset.jsonl").exists():
        raise StudyError(f"{folder} already holds a study: pass --resume, or another --out")
    if not args.load_probe_s >= 0:  # also refuses nan
        raise StudyError("--load-probe-s must be 0 or more")
    settings = study_settings(args, folder)
    prompts = study_prompts(settings)  # bad tasks and files fail before anything starts
    progress = Progress() if args.no_progress else BarProgress()
    try:
        with _joulegate(args, folder, start_demo) as url:
            load = cpu_load_for(url, args.load_probe_s)
            done = asyncio.run(
                measure(url, args.api_key, settings, prompts, folder, progress, cpu_load=load)
            )
    except (StudyAborted, KeyboardInterrupt) as exc:
        return _stopped(folder, exc)
    report_results(folder, *done, url)
    return 0


def default_folder() -> Path:
    """``bench/<UTC time>`` under the user's data folder (never the working directory)."""
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    return Path(platformdirs.user_data_dir("joulegate")) / "bench" / stamp


def _stopped(folder: Path, exc: BaseException) -> int:
    """Say why the study stopped and how to continue it; exit status 1."""
    why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
    print(f"joulegate bench: stopped: {why}", file=sys.stderr)
    kept = len(Dataset(folder).rows)
    print(
        f"joulegate bench: {kept} finished requests are kept in {folder}; "
        f"`joulegate bench --resume --out {folder}` continues",
        file=sys.stderr,
    )
    return 1


@contextlib.contextmanager
def _joulegate(
    args: argparse.Namespace, folder: Path, start_demo: DemoStarter | None
) -> Iterator[str]:
    if args.url:
        yield args.url.rstrip("/").removesuffix("/v1")
        return
    if start_demo is None:
        raise StudyError("no --url given and this joulegate cannot start the demo")
    folder.mkdir(parents=True, exist_ok=True)
    with start_demo(args, folder) as url:
        yield url


async def measure(
    url: str,
    api_key: str | None,
    settings: StudySettings,
    prompts: list[Prompt],
    folder: Path,
    progress: Progress,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    cpu_load: CpuLoad | None = None,
) -> tuple[StudySettings, Dataset, RunStats]:
    """Run the study against joulegate at ``url``: its settings (models and tasks
    resolved), its dataset and what the run cost."""
    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport) as http:
        client = StudyClient(http, api_key=api_key)
        if not settings.models:
            settings = msgspec.structs.replace(settings, models=tuple(await client.models()))
        await check_models(client, settings.models)  # before a file is written
        if not settings.tasks:
            settings = msgspec.structs.replace(settings, tasks=_tasks_of(prompts))
        dataset = await asyncio.to_thread(_open_study, folder, settings)
        try:
            stats = await run_study(
                client, settings, prompts, dataset, progress=progress, cpu_load=cpu_load
            )
        finally:
            dataset.close()
    return settings, dataset, stats


def _open_study(folder: Path, settings: StudySettings) -> Dataset:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _SETTINGS_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(settings)))
    dataset = Dataset(folder)
    dataset.open()
    return dataset


def report_results(
    folder: Path, settings: StudySettings, dataset: Dataset, stats: RunStats, url: str
) -> None:
    """Write the results and print, first, what the study found; then its warnings, the
    tables, the methods and the harness's overhead."""
    summary, findings, lines = finish(folder, settings, dataset, stats, url)
    print(findings.to_text())
    print(summary.to_text())
    print("Methods\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    print(overhead_line(stats))
    print(f"dataset, plots and report in {folder}/ (report.html)")


def finish(
    folder: Path, settings: StudySettings, dataset: Dataset, stats: RunStats, url: str
) -> tuple[Summary, Findings, list[str]]:
    """Write ``summary.json``, ``summary.md``, the plots and ``report.html``."""
    summary = summarise(dataset.rows, settings.models, settings.tasks)
    findings = find(summary, stats.baselines, settings.max_tokens)
    checks = stats.joulegate or load_json(folder / JOULEGATE_FILE) or {}
    if stats.joulegate:
        (folder / JOULEGATE_FILE).write_text(json.dumps(checks, indent=2), encoding="utf-8")
    backends = load_json(folder / BACKENDS_FILE)
    lines = methods(settings, dataset.rows, stats.baselines, checks, backends, url)
    data = {**findings.to_json(), **summary.to_json(), "methods": lines}
    data["baselines"] = [
        {
            "model": b.model,
            "idle_power_w": b.idle_power_w,
            "meter": b.meter,
            "estimated": b.estimated,
            "read_at": b.read_at,
            "estimate_floor_w": b.floor_w,
            "estimate_full_w": b.full_w,
            "busy_share": b.busy_share,
            "cpu_busy_share": b.cpu_busy_share,
            "cpu_probe_s": b.cpu_probe_s,
            "source": "energy.idle_power_w of the model's warm-up request; /readyz meters",
        }
        for b in stats.baselines
    ]
    data["harness"] = {
        "requests_s": stats.requests_s,
        "client_s": stats.client_s,
        "loop_s": stats.loop_s,
        "harness_s": stats.harness_s,
        "harness_pct": stats.harness_pct,
    }
    (folder / "summary.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (folder / "summary.md").write_text(summary.to_markdown(), encoding="utf-8")
    plots = draw_plots(summary, dataset.rows, folder)
    shown = {**msgspec.to_builtins(settings), "url": url}
    write_report(folder / "report.html", summary, findings, lines, shown, plots,
                 [overhead_line(stats)])  # fmt: skip
    if not plots_available():
        print(
            "no plots: matplotlib is not installed (pip install 'joulegate[study]')",
            file=sys.stderr,
        )
    return summary, findings, lines


def overhead_line(stats: RunStats) -> str:
    """The harness's own cost, as a share of the requests' summed duration."""
    pct = stats.harness_pct
    share = "n/a" if pct is None else f"{pct:.2f}%"
    return (
        f"harness overhead: {stats.harness_s:.3f} s between requests = {share} of the "
        f"{stats.requests_s:.2f} s the {stats.sent} requests took in joulegate "
        f"(round trips seen by the harness: {stats.client_s:.2f} s)"
    )


def _load_settings(folder: Path) -> StudySettings:
    path = folder / _SETTINGS_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=StudySettings)
    except OSError:
        raise StudyError(f"--resume: no study in {folder} (no {_SETTINGS_FILE})") from None
    except msgspec.DecodeError as exc:
        raise StudyError(f"--resume: {path} is damaged ({exc})") from None


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _tasks_of(prompts: list[Prompt]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.task for p in prompts))
