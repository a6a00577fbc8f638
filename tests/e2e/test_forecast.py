"""The forecast on the real llama.cpp server: a few requests recorded, then a restarted
joulegate forecasts the next one from them, with the prompt counted by llama.cpp's own
tokenizer, and the next inference carries its forecast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import MODEL, Joulegate

TASK = {"x-joulegate-task": "e2e-forecast"}
QUESTIONS = ("Say hi.", "Name a colour.", "Count to three, please.")


def ask(jg: Joulegate, question: str, max_tokens: int) -> Any:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
    with OpenAI(base_url=jg.base_url, api_key="unused", max_retries=0, timeout=120) as sdk:
        return sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,
            extra_headers=TASK,
        )  # fmt: skip


def test_a_restarted_joulegate_forecasts_from_the_recorded_requests(
    start_joulegate: Callable[..., Joulegate],
) -> None:
    first = start_joulegate()
    ledger = first.env["JOULEGATE_LEDGER_PATH"]
    # Nine requests (a fit needs eight) of three prompt sizes and three output caps.
    answers = [ask(first, q, n).parse() for q in QUESTIONS for n in (2, 3, 4)]
    assert all(a.usage.completion_tokens <= 4 for a in answers)
    # A restart on the same ledger fits it at start-up.
    second = start_joulegate(JOULEGATE_LEDGER_PATH=ledger)
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[2]}],
            "max_tokens": 4}  # fmt: skip
    r = httpx.post(second.url + "/v1/energy/forecast", json=body, headers=TASK, timeout=30)
    assert r.status_code == 200, r.text
    f = r.json()
    # Every answer filled its cap (2, 3 or 4): at 4, those that hit 2 and 3 run to 4.
    assert f["basis"] == "rescaled task history" and f["history_cap"] == 2
    assert f["task"] == "e2e-forecast" and f["completion_tokens"]["p50"] == 4
    assert f["prompt_tokens_source"] == "backend_tokenizer"
    assert f["prompt_tokens"] == answers[-1].usage.prompt_tokens  # what llama.cpp counted
    for name in ("completion_tokens", "energy_j", "duration_s", "co2e_g"):
        figure = f[name]
        assert figure is not None, name
        assert figure["low"] <= figure["p50"] <= figure["high"], name
    assert f["energy_j"]["p50"] > 0 and f["fit"]["rows"] == 9
    assert f["fit"]["energy"] == "estimated"  # no RAPL or NVML here: the estimate's rows
    # The next inference carries the forecast made at its admission. Admission asks the
    # backend nothing: it sizes the prompt by its characters (10 tokens here, missing the
    # template's system prompt) put in the tokens the backend counted so far (36 for it,
    # by the tokenizer just now), so it forecasts what the endpoint did.
    raw = ask(second, QUESTIONS[2], 4)
    energy = raw.parse().model_extra["energy"]
    assert energy["forecast_energy_j"] == pytest.approx(f["energy_j"]["p50"], rel=1e-3)
    assert float(raw.headers["x-energy-forecast-j"]) == pytest.approx(
        energy["forecast_energy_j"], abs=1e-3
    )
