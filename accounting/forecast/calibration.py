"""A prompt's size in the backend's tokens, from its approximation, learnt per model.

The forecast's fits are in the tokens the backend reports, which include what its
chat template adds (SmolLM2's hidden system prompt makes a 10-token approximation
36 tokens). At admission there is no time to ask the backend's tokenizer, so each
model's counts are kept as a line in the approximation, ``tokens ≈ a + b * approx``,
fitted on the requests it served (their usage) and the forecasts whose prompt its
tokenizer counted. The sums decay, so a changed template is learnt again; until a
model has shown two different prompt sizes the line is the approximation shifted by
the mean gap.

Both ``POST /v1/energy/forecast`` and ``joulegate forecast`` size a prompt with the
one :func:`count_prompt`: the backend's own tokenizer where it has one and answers
in time, else the approximation put in that model's tokens. Each ledger row keeps
the approximation of its prompt (``request_params.prompt_approx_tokens``) beside
the count its backend reported, so the calibration is learnt from the ledger
(:func:`calibration_from_rows`) by the command line, and by the proxy at start-up,
alike: the same prompt no longer counted ~22 tokens in one and 45 in the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import httpx

from proxy.backends import Backend
from proxy.prompt import CHARS_PER_TOKEN, prompt_size
from proxy.tokenizer import TOKENIZING_PROVIDERS, count_prompt_tokens

DECAY = 0.98
"""Each new count weighs as much as the last ~50 together."""
MAX_MODELS = 1024
"""Models remembered at most (requested names are the clients')."""
SLOPE_RANGE = (0.25, 4.0)
"""The slopes believed: a tokenizer 4x denser or sparser than 4 characters a token."""
TOKENS_PER_MESSAGE = 4
"""What a chat template adds around each message (role markers, separators)."""
APPROX_PARAM = "prompt_approx_tokens"
"""The ``request_params`` key under which a ledger row keeps its prompt's approximation."""
CALIBRATION_ROWS = 1000
"""The latest ledger rows the calibration is learnt from."""
CALIBRATION_SQL = (  # among the latest 50,000 rows: an old ledger is not scanned whole
    "SELECT model_served, prompt_tokens, request_params FROM requests"
    " WHERE id > (SELECT COALESCE(MAX(id), 0) FROM requests) - 50000"
    " AND failure IS NULL AND status < 400 AND model_served IS NOT NULL"
    " AND prompt_tokens IS NOT NULL AND request_params LIKE '%prompt_approx_tokens%'"
    " ORDER BY id DESC LIMIT ?"
)
"""The latest rows that kept their approximation, newest first (one ``?``: the limit)."""
PromptTokensSource = Literal["backend_tokenizer", "approximation"]
"""Where a forecast's ``prompt_tokens`` came from."""


def approx_prompt_tokens(body: Mapping[str, Any] | None) -> int:
    """The prompt's tokens, approximated from its characters (no tokenizer)."""
    chars, messages = prompt_size(body)
    return int(-(-chars // CHARS_PER_TOKEN)) + TOKENS_PER_MESSAGE * messages


class PromptCalibration:
    """Per model, the backend's prompt tokens as a line in the approximation."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}
        """Model → decayed n, sum x, sum y, sum x*x, sum x*y (x: approximation, y: count)."""

    def note(self, model: str, approx: int, counted: int) -> None:
        """The backend counted ``counted`` tokens where the approximation said ``approx``."""
        sums = self._sums.get(model)
        if sums is None:
            if len(self._sums) >= MAX_MODELS:
                return
            sums = self._sums[model] = [0.0] * 5
        x, y = float(approx), float(counted)
        for i, value in enumerate((1.0, x, y, x * x, x * y)):
            sums[i] = sums[i] * DECAY + value

    def tokens(self, model: str, approx: int) -> int:
        """``approx`` in ``model``'s backend tokens (``approx`` itself for a model not seen)."""
        sums = self._sums.get(model)
        if sums is None:
            return approx
        n, sx, sy, sxx, sxy = sums
        mean_x, mean_y = sx / n, sy / n
        var_x = sxx / n - mean_x * mean_x
        slope = 1.0
        if var_x > 1e-6 * max(1.0, mean_x * mean_x):
            low, high = SLOPE_RANGE
            slope = min(high, max(low, (sxy / n - mean_x * mean_y) / var_x))
        return max(0, round(mean_y + slope * (approx - mean_x)))


def calibration_from_rows(rows: Iterable[Sequence[Any]]) -> PromptCalibration:
    """A calibration learnt from :data:`CALIBRATION_SQL` rows (newest first)."""
    calibration = PromptCalibration()
    for model, counted, params in reversed(list(rows)):
        try:
            approx = json.loads(params).get(APPROX_PARAM) if isinstance(params, str) else None
        except (ValueError, AttributeError):
            continue
        if isinstance(approx, int) and isinstance(counted, int):
            calibration.note(str(model), approx, counted)
    return calibration


async def count_prompt(
    client: httpx.AsyncClient, backend: Backend | None, model: str,
    body: Mapping[str, Any], calibration: PromptCalibration,
) -> tuple[int, PromptTokensSource]:  # fmt: skip
    """The prompt tokens of ``body`` for ``model``: counted by ``backend``'s tokenizer
    when it has one and answers in time (and then learnt by ``calibration``), else
    the approximation in ``model``'s tokens."""
    approx = approx_prompt_tokens(body)
    if backend is not None and backend.provider in TOKENIZING_PROVIDERS:
        counted = await count_prompt_tokens(client, backend.url, body)
        if counted is not None:
            calibration.note(model, approx, counted)
            return counted, "backend_tokenizer"
    return calibration.tokens(model, approx), "approximation"
