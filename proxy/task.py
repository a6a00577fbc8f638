"""The task a request is for: a short name the client tags it with.

A client says what kind of work a request is (``code``, ``math``, …) with the
``x-joulegate-task`` header or, as OpenAI's API allows, ``metadata.task`` in the
body; the header wins when both are given. The name is recorded in the ledger,
put on the request's spans and, bounded to :data:`BUNDLED_TASKS` plus the
configured ``telemetry.metric_tasks``, used as a Prometheus label, so that
energy can be compared per model *and* per task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from config import TASK_NAME_PATTERN
from config.errors import BadRequest

TASK_HEADER = "x-joulegate-task"
BUNDLED_TASKS: tuple[str, ...] = ("code", "math", "questions", "sql", "translation")
"""The task sets ``joulegate bench`` ships; they always have their own metric label."""
_TASK_NAME = re.compile(TASK_NAME_PATTERN)


def is_task_name(name: str) -> bool:
    """Whether ``name`` is a valid task: 1 to 40 of ``a-z``, ``0-9``, ``_`` and ``-``."""
    return _TASK_NAME.fullmatch(name) is not None


def request_task(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> str | None:
    """The request's task from its header or ``metadata.task``; None when untagged.

    Raises :class:`~config.errors.BadRequest` naming the header (or the body field)
    for a value that is not a task name.
    """
    if TASK_HEADER in headers:
        return _checked(headers[TASK_HEADER].strip(), TASK_HEADER)
    metadata = body.get("metadata") if body is not None else None
    if isinstance(metadata, dict) and "task" in metadata:
        return _checked(metadata["task"], "metadata.task")
    return None


def _checked(value: object, where: str) -> str:
    if isinstance(value, str) and is_task_name(value):
        return value
    shown = repr(value)[:60]
    raise BadRequest(
        f"{where}: {shown} is not a task name ({TASK_HEADER}: 1 to 40 of a-z, 0-9, '_' and '-')",
        code="invalid_task",
        param=where,
    )
