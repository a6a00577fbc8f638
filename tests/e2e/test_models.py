"""Two real models behind one joulegate: listing, routing by model, energy per model."""

from __future__ import annotations

import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import GEMMA, MODEL, Joulegate

HI = [{"role": "user", "content": "Name a colour."}]


def test_models_lists_both_servers_models(joulegate: Joulegate, llama_urls: dict[str, str]) -> None:
    client = OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {MODEL, GEMMA} == set(llama_urls)
    # Each entry as its backend gave it.
    assert all(m.owned_by == "llamacpp" for m in listed.values())


@pytest.mark.parametrize("model", [MODEL, GEMMA])
def test_each_model_is_served_by_its_own_server(joulegate: Joulegate, model: str) -> None:
    client = OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, max_tokens=6, temperature=0
    )
    answer = raw.parse()
    assert answer.model == model
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 6
    extra = answer.model_extra or {}
    # llama-server's own per-request timings pass through untouched.
    assert extra["timings"]["predicted_n"] == answer.usage.completion_tokens
    energy = extra["energy"]
    assert energy["energy_j"] > 0
    assert float(raw.headers["x-energy-j"]) == pytest.approx(energy["energy_j"], abs=5e-4)


async def test_async_streams_route_by_model_and_carry_usage(joulegate: Joulegate) -> None:
    client = AsyncOpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    for model in (GEMMA, MODEL):
        stream = await client.chat.completions.create(
            model=model,
            messages=HI,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert {c.model for c in chunks} == {model}
        usage = next(c.usage for c in chunks if c.usage is not None)
        energy = (chunks[-1].model_extra or {})["energy"]
        assert energy["energy_j"] > 0
        assert energy["sci_g_per_token"] == pytest.approx(
            energy["sci_g"] / usage.completion_tokens, rel=1e-3
        )
    await client.close()


def test_unknown_model_is_404_with_the_models_that_exist(joulegate: Joulegate) -> None:
    client = OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert MODEL in body["message"] and GEMMA in body["message"]


def test_report_by_backend_splits_the_two_servers(start_joulegate: object) -> None:
    jg: Joulegate = start_joulegate()  # type: ignore[operator]
    client = OpenAI(base_url=jg.base_url, api_key="unused", max_retries=0)
    for model in (MODEL, GEMMA, GEMMA):
        client.chat.completions.create(model=model, messages=HI, max_tokens=3)
    done = jg.cli("report", "--by", "backend", "--format", "json")
    assert done.returncode == 0, done.stderr
    groups = json.loads(done.stdout)["groups"]
    assert sorted(g["requests"] for g in groups) == [1, 2]
    assert len({g["backend"] for g in groups}) == 2
    done = jg.cli("report", "--by", "model", "--format", "json")
    by_model = {g["model"]: g["requests"] for g in json.loads(done.stdout)["groups"]}
    assert by_model == {MODEL: 1, GEMMA: 2}
