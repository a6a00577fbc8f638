"""CO2eq and SCI on real responses from llama.cpp, read with the OpenAI SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from openai import OpenAI

from tests.e2e.conftest import MODEL, Joulegate

MESSAGES: Any = [{"role": "user", "content": "Name three colours."}]
LIFETIME_S = 4 * 365.25 * 86400
EMBODIED_G = 5_864_000.0


@pytest.fixture(scope="module")
def france(start_joulegate: Callable[..., Joulegate]) -> Joulegate:
    """joulegate using the bundled table for France, with a PUE of 1.2."""
    return start_joulegate(
        JOULEGATE_CARBON_PROVIDER="table",
        JOULEGATE_CARBON_COUNTRY="FR",
        JOULEGATE_CARBON_PUE="1.2",
        # The setting still overrides the embodied emissions chosen for the machine.
        JOULEGATE_CARBON_EMBODIED_G=str(EMBODIED_G),
    )


def check_consistent(energy: dict[str, Any], tokens: int | None) -> None:
    """The carbon fields agree with the metered energy, the window and the tokens."""
    assert energy["energy_j"] is not None and energy["energy_j"] > 0, "needs the meters' energy"
    assert energy["carbon_source"] == "table:FRA"
    assert energy["carbon_intensity_g_per_kwh"] == 56.0
    assert energy["pue"] == 1.2
    expected_co2e_g = energy["energy_j"] / 3.6e6 * 56.0 * 1.2
    assert energy["co2e_g"] == pytest.approx(expected_co2e_g, rel=1e-3)
    assert energy["sci_operational_g"] == energy["co2e_g"]
    assert energy["embodied_model"] == "fixed: carbon.embodied_g 5,864 kg"
    expected_embodied_g = EMBODIED_G * energy["duration_ms"] / 1000 / LIFETIME_S
    assert energy["sci_embodied_g"] == pytest.approx(expected_embodied_g, rel=1e-2, abs=1e-6)
    assert energy["sci_g"] == pytest.approx(energy["co2e_g"] + energy["sci_embodied_g"], rel=1e-5)
    if tokens is None:  # the backend reported no usage: no per-token score, not a guess
        assert energy["sci_g_per_token"] is None
    else:
        assert tokens > 0
        assert energy["sci_g_per_token"] == pytest.approx(energy["sci_g"] / tokens, rel=1e-5)


def test_response_reports_co2e_and_sci_in_headers_and_body(france: Joulegate) -> None:
    client = OpenAI(base_url=france.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=12
    )
    done = raw.parse()
    assert done.usage is not None and done.model_extra is not None
    energy = done.model_extra["energy"]
    check_consistent(energy, done.usage.completion_tokens)
    h = raw.headers
    assert h["x-carbon-source"] == "table:FRA"
    assert float(h["x-carbon-intensity-g-per-kwh"]) == 56.0
    assert float(h["x-co2e-g"]) == pytest.approx(energy["co2e_g"], rel=1e-5)
    assert float(h["x-sci-g"]) == pytest.approx(energy["sci_g"], rel=1e-5)
    assert float(h["x-sci-g-per-token"]) == pytest.approx(energy["sci_g_per_token"], rel=1e-5)


def test_stream_reports_co2e_and_sci_in_its_energy_chunk(france: Joulegate) -> None:
    client = OpenAI(base_url=france.base_url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with_energy = [c for c in chunks if c.model_extra and "energy" in c.model_extra]
    assert len(with_energy) == 1 and with_energy[0] is chunks[-1]
    # llama-server honours stream_options.include_usage: the per-token score uses the
    # backend's own count (the counting fallback is tested against the fake backend).
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert chunks[-1].model_extra is not None
    check_consistent(chunks[-1].model_extra["energy"], usage.completion_tokens)


def test_default_settings_use_the_world_average(joulegate: Joulegate) -> None:
    client = OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=4
    )
    energy = raw.parse().model_extra["energy"]  # type: ignore[index]
    assert raw.headers["x-carbon-source"] == "table:world-average"
    assert energy["carbon_intensity_g_per_kwh"] == 475.0
    assert energy["co2e_g"] == pytest.approx(energy["energy_j"] / 3.6e6 * 475.0, rel=1e-3)
