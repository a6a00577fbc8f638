"""A forecast's prompt tokens from the backend's own tokenizer (llama.cpp's ``/tokenize``),
and the approximation when the backend cannot count them in time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from accounting.forecast.stage import approx_prompt_tokens
from config import LedgerSettings
from proxy.tokenizer import count_prompt_tokens
from tests.support.fake_backend import FakeBackend, serving
from tests.support.forecast import A_J, B_J, C_J, MODEL, components, seeded, synthetic_rows
from tests.support.serving import JoulegateApp

WORDS = " ".join(["word"] * 50)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": WORDS}], "max_tokens": 10}
"""The fake's template makes this ``<|user|> word word ...``: 51 tokens of one word each."""


async def test_a_llamacpp_backend_counts_the_prompt_and_the_forecast_uses_its_count(
    joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded(path, synthetic_rows())
    async with (
        serving(FakeBackend(owned_by="llamacpp")) as fake,
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        chat = (await c.post("/v1/energy/forecast", json=CHAT)).json()
        text = await c.post("/v1/energy/forecast", json={"model": MODEL, "prompt": "one two three"})
    assert (chat["prompt_tokens"], chat["prompt_tokens_source"]) == (51, "backend_tokenizer")
    assert approx_prompt_tokens(CHAT) != 51  # the approximation would have said otherwise
    assert chat["energy_j"]["p50"] == pytest.approx(A_J + B_J * 51 + C_J * 10, rel=0.05)
    assert (text.json()["prompt_tokens"], text.json()["prompt_tokens_source"]) == (
        3, "backend_tokenizer",
    )  # fmt: skip
    assert [s.path for s in fake.seen] == ["/apply-template", "/tokenize", "/tokenize"]
    assert fake.seen[1].json() == {"content": f"<|user|> {WORDS}\n", "add_special": True}


async def test_a_slow_tokenizer_costs_half_a_second_and_the_approximation_is_used(
    joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded(path, synthetic_rows())
    async with (
        serving(FakeBackend(owned_by="llamacpp", tokenize_delay_s=5.0)) as fake,
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        t0 = time.monotonic()
        r = await c.post("/v1/energy/forecast", json=CHAT)
        elapsed_s = time.monotonic() - t0
    f = r.json()
    assert r.status_code == 200
    assert (f["prompt_tokens"], f["prompt_tokens_source"]) == (
        approx_prompt_tokens(CHAT), "approximation",
    )  # fmt: skip
    assert f["energy_j"] is not None
    assert 0.4 < elapsed_s < 2.0


async def test_token_ids_are_counted_without_asking_and_errors_give_none() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404 if request.url.path == "/apply-template" else 500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await count_prompt_tokens(client, "http://b", {"prompt": [1, 2, 3, 4]}) == 4
        assert await count_prompt_tokens(client, "http://b", CHAT) is None  # old server: 404
        assert await count_prompt_tokens(client, "http://b", {"prompt": "x"}) is None  # 500
        assert await count_prompt_tokens(client, "http://b", {"input": "x"}) is None
    assert asked == ["/apply-template", "/tokenize"]


async def test_the_half_second_bounds_the_template_and_the_tokenize_together() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)  # each answer within its own limit, not both
        if request.url.path == "/apply-template":
            return httpx.Response(200, json={"prompt": "a b c"})
        return httpx.Response(200, json={"tokens": [1, 2, 3]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        t0 = time.monotonic()
        assert await count_prompt_tokens(client, "http://b", CHAT) is None
        assert time.monotonic() - t0 < 0.55
        assert await count_prompt_tokens(client, "http://b", {"prompt": "a b c"}) == 3
