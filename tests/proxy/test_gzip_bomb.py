"""A compressed backend answer is decoded within ``max_parsed_answer_bytes`` (issue 31,
defect 5): beyond it the answer is relayed as it came, its energy in the headers."""

from __future__ import annotations

import gzip
import json

import httpx

from tests.support.fake_backend import FakeBackend, serving
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_compressed_answer_too_big_to_parse_is_relayed_compressed(
    joulegate_app: JoulegateApp,
) -> None:
    # 200 words of 64 KiB: a 13 MB answer that gzips to some 13 KB (a mild bomb).
    async with (
        serving(FakeBackend(words=("a" * 65536,))) as fake,
        joulegate_app(fake.url, max_parsed_answer_bytes=1024 * 1024) as jg,
        httpx.AsyncClient(timeout=30) as c,
    ):
        gz = {"x-fake-gzip": "1"}
        url = jg.url + "/v1/chat/completions"
        async with c.stream("POST", url, json={**CHAT, "max_tokens": 200}, headers=gz) as big:
            raw = b"".join([chunk async for chunk in big.aiter_raw()])
        small = await c.post(url, json={**CHAT, "max_tokens": 2}, headers=gz)
    assert big.status_code == 200 and big.headers["content-encoding"] == "gzip"
    assert len(raw) < 1024 * 1024  # as the backend sent it, not decoded
    answer = json.loads(gzip.decompress(raw))
    assert len(answer["choices"][0]["message"]["content"]) == 200 * 65536
    assert "energy" not in answer and float(big.headers["x-duration-ms"]) > 0
    # An answer that decodes within the bound is decoded and parsed as before.
    assert "content-encoding" not in small.headers and "energy" in small.json()
