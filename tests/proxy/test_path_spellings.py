"""Every spelling of a path is handled exactly like its canonical path (gated,
metered, recorded) or refused with 400: never forwarded unmetered, never to a
backend path outside the mount. Requests are written raw on a socket so no
client library normalises them first."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config import LedgerSettings
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components, db_rows
from tests.support.paths import SPELLINGS

Start = Callable[..., contextlib.AbstractAsyncContextManager[Any]]

CHAT = "/v1/chat/completions"


async def raw_post(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("latin-1")
        + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_spelling_is_gated_like_its_canonical_path_or_refused(
    spelling: str, fake: FakeBackend, joulegate_app: Start, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with joulegate_app(
        fake.url, accounting_components(), ledger=LedgerSettings(path=str(ledger))
    ) as jg:
        status, answer = await raw_post(jg.url, spelling, body)
    forwarded = [s.path for s in fake.seen]
    assert all(p.startswith("/v1/") for p in forwarded), forwarded
    rows = db_rows(ledger)
    if status == 400:
        assert json.loads(answer)["error"]["type"] == "invalid_request_error"
        assert forwarded == [] and rows == []
    else:  # handled: exactly as the chat path, recorded in the ledger
        assert status == 200, answer
        assert forwarded == [CHAT]
        assert [r["endpoint"] for r in rows] == ["chat/completions"]
