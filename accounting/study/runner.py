"""Run a study: every prompt of every task through joulegate, one request at a time.

The protocol, per model, in the order of ``--models``:

1. a warm-up request (tagged ``warmup``; not in the dataset) so that the model's
   weights are paged in and its first counted request is not penalised;
2. the idle baseline: the warm-up answer's ``energy.idle_power_w``, joulegate's
   running estimate of the machine's idle power, read before the model's first
   counted request, with ``/readyz``'s meter description;
3. ``--repeats`` passes over the selected prompts, each pass in an order shuffled
   with ``--seed`` (the same order for every model, so each meets the same
   sequence), every request tagged with its task (``x-joulegate-task``);
4. ``--cooldown-s`` of sleep before the next model.

Each answered request becomes a :class:`~accounting.study.dataset.StudyRow`,
appended and flushed before the next is sent. Rows already in the dataset (a
resumed study) are not sent again. A request joulegate cannot answer stops the
study with :class:`~config.errors.StudyAborted`; what was finished stays.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from accounting.study.dataset import Dataset, StudyRow
from accounting.study.host_load import CpuLoad
from accounting.study.prompts import Prompt
from config.errors import StudyAborted, StudyError
from proxy.figures import FIGURES
from proxy.task import TASK_HEADER

WARMUP_TASK = "warmup"


class StudySettings(msgspec.Struct, frozen=True, kw_only=True):
    """What a study measures; saved as ``study.json`` so that ``--resume`` repeats it."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    prompts_per_task: int = 50
    repeats: int = 3
    max_tokens: int = 128
    seed: int = 0
    prompt_file: str | None = None
    cooldown_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the plan."""

    model: str
    repeat: int
    prompt: Prompt

    @property
    def key(self) -> tuple[str, str, str, int]:
        """Matches :attr:`StudyRow.key`."""
        return (self.model, self.prompt.task, self.prompt.id, self.repeat)


def plan_requests(settings: StudySettings, prompts: Sequence[Prompt]) -> list[Planned]:
    """Every request of the study in the order it is sent."""
    out: list[Planned] = []
    for model in settings.models:
        for repeat in range(1, settings.repeats + 1):
            order = list(prompts)
            # A string seed hashes the same in every process: a resumed study replans
            # exactly the order the interrupted one followed.
            random.Random(f"{settings.seed}:{repeat}").shuffle(order)  # noqa: S311 - not crypto
            out.extend(Planned(model, repeat, p) for p in order)
    return out


@dataclass(slots=True)
class Baseline:
    """What was read before a model's first counted request."""

    model: str
    idle_power_w: float | None
    meter: str | None
    estimated: bool | None
    read_at: str
    floor_w: float | None = None
    """The estimate's power with the machine idle (None with measured meters)."""
    full_w: float | None = None
    """The estimate's power with every CPU busy (None with measured meters)."""
    cpu_busy_share: float | None = None
    """Busy share of this machine's CPUs, nothing sent (any meter): see host_load."""
    cpu_probe_s: float | None = None

    @property
    def busy_share(self) -> float | None:
        """Where the idle baseline lies between the estimate's idle floor (0) and full
        load (1): near 1, the machine was busy with other work before the model ran.
        None when it cannot be told (measured meters, no baseline)."""
        if self.idle_power_w is None or self.floor_w is None or self.full_w is None:
            return None
        if self.full_w <= self.floor_w:
            return None
        return (self.idle_power_w - self.floor_w) / (self.full_w - self.floor_w)


@dataclass(slots=True)
class RunStats:
    """What the run itself cost, beside what it measured."""

    sent: int = 0
    requests_s: float = 0.0
    """Summed joulegate windows of this run's counted requests."""
    client_s: float = 0.0
    """Summed round trips of those requests as the harness saw them."""
    loop_s: float = 0.0
    """Wall time of the counted loops (warm-ups and cool-downs excluded)."""
    baselines: list[Baseline] = field(default_factory=list)
    joulegate: dict[str, Any] = field(default_factory=dict)
    """``/readyz``'s checks by name as the first warm-up found them (meters with the
    machine, carbon with the embodied model): the study's methods."""

    @property
    def harness_s(self) -> float:
        """Time the harness spent between requests (bookkeeping, files, progress)."""
        return max(0.0, self.loop_s - self.client_s)

    @property
    def harness_pct(self) -> float | None:
        """The harness's own time as a percentage of the requests' summed duration."""
        return 100.0 * self.harness_s / self.requests_s if self.requests_s > 0 else None


class Progress:
    """Where the study is; the CLI's implementation draws a bar, tests' records."""

    def start(self, total: int) -> None:
        """The number of requests still to send."""

    def step(self, model: str, task: str) -> None:
        """About to send a request of ``model`` for ``task``."""

    def advance(self) -> None:
        """One request finished."""

    def close(self) -> None:
        """The study ended (or stopped)."""


class StudyClient:
    """The harness's HTTP side: joulegate's OpenAI API and its readiness, nothing else."""

    def __init__(self, http: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        self._http = http
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}

    async def models(self) -> list[str]:
        """The models joulegate's backends serve (``GET /v1/models``)."""
        r = await self._get("/v1/models")
        try:
            return [str(m["id"]) for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StudyAborted(f"GET /v1/models gave no model list ({exc})") from None

    async def ready_checks(self) -> dict[str, dict[str, Any]]:
        """``/readyz``'s checks by name (empty when it cannot be read)."""
        try:
            r = await self._http.get("/readyz", headers=self._auth)
            checks = r.json().get("checks", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
        if not isinstance(checks, list):
            return {}
        return {str(c["name"]): c for c in checks if isinstance(c, dict) and "name" in c}

    async def meters(self) -> tuple[str | None, bool | None]:
        """The meters joulegate uses and whether they estimate, from ``/readyz``."""
        check = (await self.ready_checks()).get("meters", {})
        return check.get("meter"), check.get("estimated")

    async def chat(
        self, model: str, prompt: Prompt, task: str, max_tokens: int
    ) -> tuple[dict[str, Any], str, float]:
        """Send one prompt; the answer's JSON, joulegate's request id, the round trip."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": prompt.max_tokens or max_tokens,
        }
        headers = {**self._auth, TASK_HEADER: task}
        start = time.perf_counter()
        try:
            r = await self._http.post("/v1/chat/completions", json=body, headers=headers)
            answer = r.json()
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise StudyAborted(f"joulegate stopped answering ({why})") from exc
        except ValueError:
            raise StudyAborted(f"joulegate answered {r.status_code} without JSON") from None
        elapsed_s = time.perf_counter() - start
        if r.status_code != 200 or not isinstance(answer, dict):
            raise StudyAborted(f"{model} on {prompt.id}: {r.status_code} {_error_text(answer)}")
        return answer, r.headers.get("x-request-id", ""), elapsed_s

    async def _get(self, path: str) -> httpx.Response:
        try:
            r = await self._http.get(path, headers=self._auth)
        except httpx.HTTPError as exc:
            raise StudyAborted(f"cannot reach joulegate ({type(exc).__name__}: {exc})") from exc
        if r.status_code != 200:
            raise StudyAborted(f"GET {path}: {r.status_code} {_error_text(_json(r))}")
        return r


async def check_models(client: StudyClient, models: Sequence[str]) -> None:
    """Raise StudyError naming the models joulegate has when one asked for is not there."""
    served = await client.models()
    unknown = [m for m in models if m not in served]
    if unknown:
        raise StudyError(
            f"unknown model {', '.join(map(repr, unknown))}: joulegate's backends serve "
            f"{', '.join(served) or 'no models'}"
        )


async def run_study(
    client: StudyClient,
    settings: StudySettings,
    prompts: Sequence[Prompt],
    dataset: Dataset,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    cpu_load: CpuLoad | None = None,
) -> RunStats:
    """Send every planned request that the dataset does not hold yet; ``cpu_load``
    reads this machine's load before each model's counted requests."""
    progress = progress or Progress()
    await check_models(client, settings.models)
    done = {r.key for r in dataset.rows}
    todo = [p for p in plan_requests(settings, prompts) if p.key not in done]
    stats = RunStats()
    progress.start(len(todo))
    try:
        for i, model in enumerate(settings.models):
            mine = [p for p in todo if p.model == model]
            if not mine:
                continue
            if i > 0 and settings.cooldown_s > 0 and stats.sent:
                await sleep(settings.cooldown_s)
            baseline, checks = await _warm_up(client, model, mine[0].prompt, settings)
            if cpu_load is not None:
                baseline.cpu_busy_share, baseline.cpu_probe_s = await cpu_load(), cpu_load.seconds
            stats.baselines.append(baseline)
            stats.joulegate = stats.joulegate or checks
            started = time.perf_counter()
            try:
                for planned in mine:
                    progress.step(model, planned.prompt.task)
                    row = await _measure(client, planned, settings)
                    await asyncio.to_thread(dataset.append, row)
                    stats.sent += 1
                    stats.client_s += row.client_s
                    stats.requests_s += row.duration_s or 0.0
                    progress.advance()
            finally:
                stats.loop_s += time.perf_counter() - started
    finally:
        progress.close()
    return stats


async def _warm_up(
    client: StudyClient, model: str, prompt: Prompt, settings: StudySettings
) -> tuple[Baseline, dict[str, dict[str, Any]]]:
    answer, _, _ = await client.chat(model, prompt, WARMUP_TASK, settings.max_tokens)
    energy = answer.get("energy") or {}
    checks = await client.ready_checks()
    meters = checks.get("meters", {})
    meter, estimated = meters.get("meter"), meters.get("estimated")
    baseline = Baseline(
        model=model,
        idle_power_w=_float(energy.get("idle_power_w")),
        meter=meter or energy.get("meter"),
        estimated=estimated if estimated is not None else energy.get("estimated"),
        read_at=_now(),
        floor_w=_float(meters.get("estimate_floor_w")),
        full_w=_float(meters.get("estimate_full_w")),
    )
    return baseline, checks


async def _measure(client: StudyClient, planned: Planned, settings: StudySettings) -> StudyRow:
    sent_at = _now()
    answer, request_id, client_s = await client.chat(
        planned.model, planned.prompt, planned.prompt.task, settings.max_tokens
    )
    max_tokens = planned.prompt.max_tokens or settings.max_tokens
    return row_from_answer(planned, answer, request_id, client_s, sent_at, max_tokens)


def row_from_answer(
    planned: Planned,
    answer: dict[str, Any],
    request_id: str,
    client_s: float,
    sent_at: str,
    max_tokens: int | None = None,
) -> StudyRow:
    """The dataset row for one answered request (figures from its ``energy`` object)."""
    energy: dict[str, Any] = answer.get("energy") or {}
    usage: dict[str, Any] = answer.get("usage") or {}
    choices = answer.get("choices") or [{}]
    message = choices[0].get("message") or {}
    energy_range = energy.get("energy_range_j")
    low_j, high_j = (
        (_float(energy_range[0]), _float(energy_range[1]))
        if isinstance(energy_range, list) and len(energy_range) == 2
        else (None, None)
    )
    finish = choices[0].get("finish_reason")
    duration_ms = _float(energy.get("duration_ms"))
    components = {
        str(name): _float(part.get("energy_j"))
        for name, part in (energy.get("components") or {}).items()
        if isinstance(part, dict)
    }
    return StudyRow(
        model=planned.model,
        task=planned.prompt.task,
        prompt_id=planned.prompt.id,
        repeat=planned.repeat,
        prompt=planned.prompt.text,
        response=str(message.get("content") or ""),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        duration_s=None if duration_ms is None else duration_ms / 1000.0,
        client_s=client_s,
        energy_components_j=components,
        energy_low_j=low_j,
        energy_high_j=high_j,
        **study_figures(energy),
        max_tokens=max_tokens,
        finish_reason=_str(finish),
        request_id=request_id,
        ts=sent_at,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_STUDY = tuple((f.body, f.study) for f in FIGURES if f.body is not None and f.study is not None)
"""The ``energy`` object's figures a study row keeps (:data:`proxy.figures.FIGURES`)."""


def study_figures(energy: dict[str, Any]) -> dict[str, Any]:
    """A study row's figures read back from an answer's ``energy`` object: numbers as
    floats, text as text, anything else (missing, null) as None; ``estimated`` a bool."""
    out = {field: _figure(energy.get(key)) for key, field in _STUDY}
    out["estimated"] = bool(out.get("estimated"))
    return out


def _figure(value: object) -> float | str | bool | None:
    if isinstance(value, bool | str):
        return value
    return _float(value)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text[:200]


def _error_text(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("message", ""))
    return str(answer)[:200]
