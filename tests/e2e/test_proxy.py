"""The official OpenAI SDK against joulegate in front of the real llama.cpp server."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL, Joulegate

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_sync_non_streaming_with_headers(joulegate: Joulegate) -> None:
    client = openai.OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    done = raw.parse()
    assert done.choices[0].message.content
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 12
    assert float(raw.headers["x-queue-ms"]) >= 0
    assert float(raw.headers["x-duration-ms"]) > 0
    energy = (done.model_extra or {})["energy"]
    assert energy["duration_ms"] == pytest.approx(float(raw.headers["x-duration-ms"]), abs=0.1)


def test_sync_streaming_carries_energy_in_the_last_chunk(joulegate: Joulegate) -> None:
    client = openai.OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "usage chunk was not asked for and must not appear"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "energy" in (chunks[-1].model_extra or {})
    assert sum("energy" in (c.model_extra or {}) for c in chunks) == 1


async def test_async_streaming_with_raw_headers(joulegate: Joulegate) -> None:
    client = openai.AsyncOpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    assert "x-queue-ms" in raw.headers
    chunks = [c async for c in raw.parse()]
    await client.close()
    # llama.cpp's server ignores include_usage, so the energy rides in the finish chunk.
    assert sum("energy" in (c.model_extra or {}) for c in chunks) == 1
    assert "energy" in (chunks[-1].model_extra or {})


async def test_concurrent_clients_are_serialised(joulegate: Joulegate) -> None:
    client = openai.AsyncOpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)

    async def ask(i: int) -> tuple[float, float]:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Say the number {i}."}],
            max_tokens=16,
            temperature=0,
        )
        return float(raw.headers["x-queue-ms"]), float(raw.headers["x-duration-ms"])

    results = await asyncio.gather(*(ask(i) for i in range(3)))
    await client.close()
    queued = sorted(q for q, _ in results)
    shortest_run = min(d for _, d in results)
    # One at a time: the last to be admitted waited for at least the two before it.
    assert queued[-1] >= 2 * shortest_run * 0.9


def test_models_listing_and_backend_errors_pass_through(
    joulegate: Joulegate, llama_url: str
) -> None:
    client = openai.OpenAI(base_url=joulegate.base_url, api_key="unused", max_retries=0)
    assert MODEL in [m.id for m in client.models.list()]
    bad = {"model": MODEL, "messages": "not a list"}
    direct = httpx.post(llama_url + "/v1/chat/completions", json=bad, timeout=30)
    proxied = httpx.post(joulegate.base_url + "/chat/completions", json=bad, timeout=30)
    assert direct.status_code >= 400
    assert proxied.status_code == direct.status_code
    assert proxied.json() == direct.json()
