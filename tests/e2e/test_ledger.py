"""The ledger on the real llama.cpp server: keys, rows, reports, budgets and a SIGKILL."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import MODEL, Joulegate

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi."}]


def rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def sdk(jg: Joulegate, key: str) -> OpenAI:
    return OpenAI(base_url=jg.base_url, api_key=key, max_retries=0, timeout=120)


def new_key(jg: Joulegate, user: str, *extra: str) -> str:
    done = jg.cli("keys", "create", "--user", user, *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def keyed(
    start_joulegate: Callable[..., Joulegate], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Joulegate, dict[str, str]]:
    """joulegate in keys mode, keys made with the CLI before it starts."""
    ledger = tmp_path_factory.mktemp("keyed") / "ledger.sqlite3"
    first = start_joulegate(JOULEGATE_LEDGER_PATH=str(ledger), JOULEGATE_AUTH_MODE="keys")
    keys = {u: new_key(first, u) for u in ("alice", "bob")}
    keys["admin"] = new_key(first, "root", "--admin")
    return first, keys


def test_requests_with_keys_are_recorded_with_tokens_energy_and_carbon(
    keyed: tuple[Joulegate, dict[str, str]],
) -> None:
    jg, keys = keyed
    with sdk(jg, keys["alice"]) as alice, sdk(jg, "jg-nope") as stranger:
        answer = alice.chat.completions.create(model=MODEL, messages=HI, max_tokens=8)
        stream = alice.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, stream=True)
        chunks = list(stream)
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
    assert answer.choices[0].message.content and chunks
    assert all(not c.usage for c in chunks)  # joulegate's own usage request was stripped
    recorded = [r for r in rows(Path(jg.env["JOULEGATE_LEDGER_PATH"])) if r["user"] == "alice"]
    assert len(recorded) == 2
    for r in recorded:
        assert r["key_prefix"] == keys["alice"][:11] and r["status"] == 200
        assert 0 < r["completion_tokens"] <= 8
        assert r["energy_j"] > 0 and r["meter"] and r["co2e_g"] > 0 and r["carbon_source"]
        assert r["model_served"] and r["duration_s"] > 0
    assert [r["stream"] for r in recorded] == [0, 1]
    # llama-server sends usage on streams too (joulegate asks for it): both rows have
    # the backend's own counts.
    assert recorded[0]["prompt_tokens"] > 0 and recorded[1]["prompt_tokens"] > 0


def test_reports_over_http_and_the_cli_agree_and_are_isolated(
    keyed: tuple[Joulegate, dict[str, str]],
) -> None:
    jg, keys = keyed
    with sdk(jg, keys["bob"]) as bob:
        bob.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)

    def report(key: str, **params: str) -> httpx.Response:
        return httpx.get(jg.url + "/v1/energy/report", params={"unit": "J", **params},
                         headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip

    alice_own = report(keys["alice"]).json()
    assert {g["user"] for g in alice_own["groups"]} == {"alice"}
    assert report(keys["alice"], user="bob").status_code == 403
    everyone = report(keys["admin"]).json()
    assert {"alice", "bob"} <= {g["user"] for g in everyone["groups"]}
    cli = jg.cli("report", "--format", "json", "--unit", "J")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["totals"]["energy_j"] == pytest.approx(
        everyone["totals"]["energy_j"]
    )
    mine = httpx.get(
        jg.url + "/v1/energy/requests", headers={"authorization": f"Bearer {keys['bob']}"}
    ).json()
    assert [r["user"] for r in mine["data"]] == ["bob"]


def test_a_user_over_budget_gets_429_from_the_sdk(keyed: tuple[Joulegate, dict[str, str]]) -> None:
    jg, keys = keyed
    done = jg.cli("users", "set-budget", "alice", "--energy-wh", "0.000001", "--period", "day")
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60  # the running joulegate picks it up within auth.refresh_s
    with sdk(jg, keys["alice"]) as alice, pytest.raises(openai.RateLimitError) as info:
        while time.monotonic() < deadline:
            alice.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
            time.sleep(0.1)
    assert info.value.response.json()["error"]["type"] == "energy_budget_exceeded"
    assert float(info.value.response.headers["x-energy-budget-remaining-wh"]) == 0


def test_sigkill_right_after_responses_keeps_every_row(
    start_joulegate: Callable[..., Joulegate], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    jg = start_joulegate(JOULEGATE_LEDGER_PATH=str(ledger))
    with sdk(jg, "unused") as client:
        for _ in range(3):
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
            list(
                client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, stream=True)
            )
    jg.proc.send_signal(signal.SIGKILL)
    jg.proc.wait(10)
    assert len(rows(ledger)) == 6
