"""A backend's absurd token counts (2**64, 3e9, negative) never cost a ledger row and
never reach a total: they are recorded as unknown. A row the database refuses for its
content is written repaired, and never blocks the rows behind it (issue 31, 1 and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgspec
import pytest

from accounting.ledger.rows import LedgerRow
from config import AuthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store, accounting_components
from tests.support.serving import JoulegateApp

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
ODD = [
    {"prompt_tokens": 7, "completion_tokens": 2**64, "total_tokens": 2**64 + 7},
    {"prompt_tokens": 3_000_000_000, "completion_tokens": 3_000_000_000},
    {"prompt_tokens": -5, "completion_tokens": -1000, "total_tokens": -1005},
    {"prompt_tokens": 10**9 + 1, "completion_tokens": 2.5},
]


@pytest.mark.parametrize("stream", [False, True])
async def test_absurd_usage_is_recorded_as_unknown_and_no_row_is_lost(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store, stream: bool
) -> None:
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="open")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        answers = []
        for usage in [*ODD, None]:  # then a sane request, behind the odd ones
            headers = {} if usage is None else {"x-fake-usage": json.dumps(usage)}
            body = {**CHAT, "stream": stream}
            async with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                await r.aread()
            answers.append(r)
        report = (await c.get("/v1/energy/report", params={"by": "user"})).json()
    assert [r.status_code for r in answers] == [200] * 5
    rows = await store.rows()
    # Every answered request has its row, in order; the last one's counts are the real ones.
    assert [r["request_id"] for r in rows] == [a.headers["x-request-id"] for a in answers]
    tokens = [(r["prompt_tokens"], r["completion_tokens"]) for r in rows]
    # Unknown; a stream's answer tokens are then counted by its chunks, as for a
    # backend that sends no usage at all.
    answered = 3 if stream else None
    assert tokens == [(7, answered), (None, answered), (None, answered), (None, answered), (7, 3)]
    total = report["totals"]
    assert total["requests"] == 5
    assert total["prompt_tokens"] == 14 and total["completion_tokens"] == (15 if stream else 3)


async def test_a_row_the_database_refuses_is_written_repaired_with_those_behind_it(
    store: Store,
) -> None:
    odd = LedgerRow(
        request_id="odd", ts="2026-12-07T10:00:00.000000Z", user="u", endpoint="chat/completions",
        status=200, prompt_tokens=3_000_000_000, completion_tokens=2**64, model_served="a\x00b",
        energy_j=5.0,
    )  # fmt: skip
    sane = LedgerRow(request_id="sane", ts="2026-12-07T10:00:01.000000Z", completion_tokens=3)
    async with store.ledger() as ledger:
        await ledger.append(odd)
        await ledger.append(sane)
        await ledger.append_soon(msgspec.structs.replace(odd, request_id="odd-soon"))
    rows = {r["request_id"]: r for r in await store.rows()}
    assert set(rows) == {"odd", "sane", "odd-soon"}
    for rid in ("odd", "odd-soon"):
        # 2**64 fits no column: unknown. 3e9 fits a BIGINT (PostgreSQL's counters are).
        assert rows[rid]["completion_tokens"] is None and rows[rid]["energy_j"] == 5.0
        assert rows[rid]["prompt_tokens"] == 3_000_000_000
        assert rows[rid]["model_served"] == "ab"  # PostgreSQL stores no NUL in text
    assert rows["sane"]["completion_tokens"] == 3


async def test_a_refused_row_in_the_fallback_file_does_not_keep_the_others_out(
    store: Store, tmp_path: Path
) -> None:
    fallback = (
        Path(store.settings.fallback_path)
        if store.kind == "postgres"
        else Path(store.settings.path + ".pending.jsonl")
    )
    held = [
        LedgerRow(request_id=f"r{i}", ts=f"2026-12-07T10:00:0{i}.000000Z", completion_tokens=n)
        for i, n in enumerate([1, 2**64, 3])
    ]
    fallback.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in held))
    ledger = store.ledger()
    await ledger.open(serving=True)  # replays what an earlier run left held
    try:
        healthy = ledger.health()["ok"]
    finally:
        await ledger.close()
    rows = await store.rows()
    assert [(r["request_id"], r["completion_tokens"]) for r in rows] == [
        ("r0", 1), ("r1", None), ("r2", 3)
    ]  # fmt: skip
    assert healthy
