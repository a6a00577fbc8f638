"""``joulegate demo`` prints a snippet that works as printed, keys mode included."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from accounting.ledger.stage import Accounting
from config import AuthSettings, LedgerSettings, Settings
from proxy.cli import demo_snippet, needs_key
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components
from tests.support.serving import JoulegateApp


def python_part(snippet: str) -> str:
    block = snippet.split("Python (OpenAI SDK):", 1)[1].split("curl:", 1)[0]
    return "\n".join(line.removeprefix("    ") for line in block.strip("\n").splitlines())


async def test_in_keys_mode_the_demo_snippet_takes_a_key_and_says_how_to_make_one(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = LedgerSettings(path=str(tmp_path / "l.sqlite3"))
    auto = Settings(ledger=ledger, auth=AuthSettings(mode="auto"))
    assert not await asyncio.to_thread(needs_key, auto)  # no key yet: open
    async with joulegate_app(fake.url, accounting_components(), ledger=ledger) as jg:
        key = (await jg.app.state.ctx.get(Accounting).keys.create("you"))[0]
        assert await asyncio.to_thread(needs_key, auto)
        snippet = demo_snippet(jg.url + "/v1", "fake-model", keyed=True)
        monkeypatch.setenv("JG_API_KEY", key)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await asyncio.to_thread(exec, python_part(snippet), {})
    assert "Authorization: Bearer $JG_API_KEY" in snippet
    assert out.getvalue().strip()  # it ran, and printed the energy
    assert [r.headers.get("authorization") for r in fake.seen] == [None]  # the key stayed
