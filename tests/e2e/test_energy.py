"""Energy on the real llama.cpp server: every response measured, and labelled.

This machine (like CI and a plain cloud VM) has no RAPL or NVML, so the energy
comes from the estimate and must say so. More tokens must cost more energy.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from tests.e2e.conftest import MODEL, Joulegate

# SmolLM2 writes on for well over 96 tokens here at temperature 0 (checked below).
STORY: Any = [{"role": "user", "content": "Write a long story about a dragon."}]


def client(jg: Joulegate) -> OpenAI:
    return OpenAI(base_url=jg.base_url, api_key="unused", max_retries=0, timeout=120)


def chat(jg: Joulegate, max_tokens: int) -> tuple[dict[str, str], Any, dict[str, Any]]:
    raw = client(jg).chat.completions.with_raw_response.create(
        model=MODEL, messages=STORY, max_tokens=max_tokens, temperature=0
    )
    body = raw.parse()
    return dict(raw.headers), body, body.model_extra["energy"]


def test_every_response_has_energy_headers_and_body_labelled_estimated(
    joulegate: Joulegate,
) -> None:
    headers, body, energy = chat(joulegate, 8)
    assert body.choices[0].message.content
    assert headers["x-energy-meter"] == "estimate"
    assert headers["x-energy-estimated"] == "true"
    for name in ("x-energy-j", "x-energy-dynamic-j", "x-power-w", "x-energy-cpu-j"):
        assert float(headers[name]) >= 0, name
    assert "x-energy-gpu-j" not in headers and "x-energy-machine-j" not in headers
    assert energy["meter"] == "estimate" and energy["estimated"] is True
    assert abs(energy["energy_j"] - float(headers["x-energy-j"])) < 1e-3
    assert energy["window_s"] > 0
    assert abs(energy["window_s"] * 1000 - energy["duration_ms"]) < 1.0
    # The estimate's components (cpu, and dram with per-vCPU coefficients) make the total,
    # and its range brackets the figure.
    parts = energy["components"]
    assert "cpu" in parts and all(p["estimated"] is True for p in parts.values())
    assert sum(p["energy_j"] for p in parts.values()) == pytest.approx(energy["energy_j"], abs=1e-5)
    low_j, high_j = energy["energy_range_j"]
    assert low_j <= energy["energy_j"] <= high_j and energy["estimate_model"]
    assert energy["idle_power_w"] is not None


def test_a_stream_carries_energy_in_its_last_chunk(joulegate: Joulegate) -> None:
    stream = client(joulegate).chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    with_energy = [c for c in chunks if (c.model_extra or {}).get("energy")]
    assert len(with_energy) == 1
    energy = with_energy[0].model_extra["energy"]  # type: ignore[index]
    assert with_energy[0].choices and with_energy[0].choices[0].finish_reason
    assert energy["meter"] == "estimate" and energy["estimated"] is True
    assert energy["energy_j"] is not None and energy["energy_j"] >= 0


def test_a_longer_generation_reports_more_energy(joulegate: Joulegate) -> None:
    chat(joulegate, 2)  # warm the model's cache so both runs start alike
    _, short_body, short = chat(joulegate, 4)
    _, long_body, long = chat(joulegate, 96)
    assert short_body.usage.completion_tokens == 4
    assert long_body.usage.completion_tokens == 96, "the model stopped early: pick another prompt"
    assert long["window_s"] > short["window_s"]
    assert long["energy_j"] > short["energy_j"]
    assert long["components"]["cpu"]["energy_j"] > short["components"]["cpu"]["energy_j"]
