"""The prompts a study sends: the bundled task sets, or the user's own file.

The bundled file (``data/tasks.jsonl``, written for joulegate) holds 50 short
prompts for each of :data:`~proxy.task.BUNDLED_TASKS`. A user's file is JSON
lines or CSV (by its suffix: ``.csv`` is CSV, anything else JSON lines) with a
``task`` and a ``prompt`` per row, an optional ``max_tokens`` and an optional
``id``; a bad row raises :class:`~config.errors.StudyError` naming its line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from config.errors import StudyError
from proxy.task import is_task_name


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of a task set."""

    task: str
    id: str
    """Unique within the study (``code-007``); the dataset's ``prompt_id``."""
    text: str
    max_tokens: int | None = None
    """This prompt's own limit (else the study's ``--max-tokens``)."""


def bundled_prompts() -> list[Prompt]:
    """The task sets shipped with joulegate."""
    data = resources.files("accounting.study").joinpath("data/tasks.jsonl").read_text("utf-8")
    return _parse_jsonl(data, "the bundled tasks.jsonl")


def load_prompt_file(path: Path) -> list[Prompt]:
    """A user's prompt file (JSON lines, or CSV when it ends in ``.csv``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"--prompt-file {path}: cannot read it ({exc})") from None
    where = f"--prompt-file {path}"
    parse = _parse_csv if path.suffix.lower() == ".csv" else _parse_jsonl
    prompts = parse(text, where)
    if not prompts:
        raise StudyError(f"{where}: no prompts in it")
    return prompts


def select(prompts: Sequence[Prompt], tasks: Sequence[str] | None, per_task: int) -> list[Prompt]:
    """The first ``per_task`` prompts of each of ``tasks`` (all tasks when None), in
    the order ``tasks`` names them; an unknown task raises StudyError naming it."""
    by_task: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_task.setdefault(p.task, []).append(p)
    wanted = list(tasks) if tasks is not None else list(by_task)
    for task in wanted:
        if task not in by_task:
            raise StudyError(
                f"unknown task {task!r}: the prompts have {', '.join(sorted(by_task))}"
            )
    if per_task < 1:
        raise StudyError("--prompts must be at least 1")
    return [p for task in wanted for p in by_task[task][:per_task]]


def _parse_jsonl(text: str, where: str) -> list[Prompt]:
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise StudyError(f"{where} line {number}: not JSON ({exc.msg})") from None
    return _prompts(rows, where)


def _parse_csv(text: str, where: str) -> list[Prompt]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"task", "prompt"} - set(reader.fieldnames or ())
    if missing:
        raise StudyError(f"{where} line 1: the header lacks {', '.join(sorted(missing))}")
    try:
        rows = [(reader.line_num, dict(row)) for row in reader]
    except csv.Error as exc:
        raise StudyError(f"{where} line {reader.line_num}: {exc}") from None
    return _prompts(rows, where)


def _prompts(rows: Iterable[tuple[int, Any]], where: str) -> list[Prompt]:
    out: list[Prompt] = []
    ids: set[str] = set()
    counts: dict[str, int] = {}
    for number, row in rows:
        at = f"{where} line {number}"
        if not isinstance(row, dict):
            raise StudyError(f"{at}: expected an object with task and prompt")
        task, text = row.get("task"), row.get("prompt")
        if not isinstance(task, str) or not is_task_name(task):
            raise StudyError(f"{at}: task {task!r} is not a task name (a-z, 0-9, _ and -)")
        if not isinstance(text, str) or not text.strip():
            raise StudyError(f"{at}: prompt is missing or empty")
        counts[task] = counts.get(task, 0) + 1
        pid = row.get("id") or f"{task}-{counts[task]:03d}"
        if not isinstance(pid, str) or pid in ids:
            raise StudyError(f"{at}: id {pid!r} is not a unique string")
        ids.add(pid)
        out.append(Prompt(task, pid, text, _max_tokens(row.get("max_tokens"), at)))
    return out


def _max_tokens(value: object, at: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise StudyError(f"{at}: max_tokens {value!r} is not a whole number") from None
    if number < 1:
        raise StudyError(f"{at}: max_tokens must be at least 1")
    return number
