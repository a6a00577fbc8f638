"""One access line per request, text or JSON, with its user, status and energy, never a key."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from accounting import SqliteLedger
from accounting.auth import KeyStore
from config import AuthSettings, ConfigError, LedgerSettings, load_settings
from proxy.observability.accesslog import ACCESS_LOGGER, log_handler
from tests.support.fake_backend import FakeBackend, serving
from tests.support.meters import SteadyMeter
from tests.support.telemetry import deployed, joulegate, until

PROMPT = "the secret plans are in the left drawer"
CHAT = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}


@contextlib.contextmanager
def access_lines() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """What the access logger writes, as text and as JSON lines."""
    logger = logging.getLogger(ACCESS_LOGGER)
    text, jsonl = io.StringIO(), io.StringIO()
    handlers = [log_handler("text", text), log_handler("json", jsonl)]
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield text, jsonl
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(level)


async def test_each_request_gets_one_line_with_its_outcome_and_energy(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        alice, _ = await KeyStore(ledger).create("alice")
    settings = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    meter = SteadyMeter(100.0, "gpu", name="nvml")
    with access_lines() as (text, jsonl):
        async with (
            serving(FakeBackend(models=("m",))) as fake,
            joulegate(fake.url, deployed(meter), **settings) as jg,
            httpx.AsyncClient(base_url=jg.url) as c,
        ):
            ok = await c.post("/v1/chat/completions?x=1", json=CHAT,
                              headers={"authorization": f"Bearer {alice}"})  # fmt: skip
            wrong = f"{alice[:-4]}abcd"
            refused = await c.post("/v1/chat/completions", json=CHAT,
                                   headers={"authorization": f"Bearer {wrong}"})  # fmt: skip
            await until(lambda: jsonl.getvalue().count("\n") == 2)
    assert (ok.status_code, refused.status_code) == (200, 401)
    first, second = (json.loads(line) for line in jsonl.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "joulegate.access"
    assert {k: first[k] for k in ("method", "path", "status", "user", "model", "meter")} == {
        "method": "POST", "path": "/v1/chat/completions", "status": 200, "user": "alice",
        "model": "m", "meter": "nvml",
    }  # fmt: skip
    assert first["failure"] is None and first["request_id"] == ok.headers["x-request-id"]
    assert first["energy_j"] == pytest.approx(ok.json()["energy"]["energy_j"], abs=1e-5)
    assert first["queue_ms"] >= 0 and first["duration_ms"] > 0
    assert (second["status"], second["user"], second["energy_j"]) == (401, "anonymous", None)
    assert second["failure"] == "authentication_error"

    ok_line, refused_line = text.getvalue().splitlines()
    assert " joulegate.access: POST /v1/chat/completions 200 user=alice model=m " in ok_line
    assert f"energy_j={first['energy_j']} meter=nvml failure=- " in ok_line
    assert "POST /v1/chat/completions 401 user=anonymous " in refused_line
    assert "energy_j=- meter=- failure=authentication_error" in refused_line
    everything = text.getvalue() + jsonl.getvalue()
    for secret in (alice, wrong, alice[3:], PROMPT, "drawer", "x=1"):
        assert secret not in everything


async def test_names_a_client_chose_cannot_break_the_line(tmp_path: Path) -> None:
    settings = {"ledger": LedgerSettings(path=str(tmp_path / "l.sqlite3")),
                "auth": AuthSettings(mode="trust")}  # fmt: skip
    with access_lines() as (text, jsonl):
        async with (
            serving(FakeBackend(models=("m",))) as fake,
            joulegate(fake.url, deployed(SteadyMeter(10.0, "cpu")), **settings) as jg,
            httpx.AsyncClient(base_url=jg.url) as c,
        ):
            body = {**CHAT, "model": 'm\nFAKE 200 user="root"'}
            await c.post("/v1/chat/completions", json=body,
                         headers={"x-joulegate-user": "eve wants=root"})  # fmt: skip
            await until(lambda: jsonl.getvalue().count("\n") == 1)
    (line,) = text.getvalue().splitlines()
    assert 'user="eve wants=root"' in line
    assert 'model="m\\nFAKE 200 user=\\"root\\""' in line
    assert json.loads(jsonl.getvalue())["model"] == 'm\nFAKE 200 user="root"'


def test_log_format_is_text_by_default_and_refuses_other_values() -> None:
    assert load_settings(env={}).log_format == "text"
    assert load_settings(env={"JOULEGATE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="'log_format'"):
        load_settings(env={"JOULEGATE_LOG_FORMAT": "xml"})


async def test_requests_refused_before_parsing_are_logged_counted_and_identified(
    tmp_path: Path,
) -> None:
    from proxy.observability.metrics import metrics_endpoint

    settings = {"ledger": LedgerSettings(path=str(tmp_path / "l.sqlite3")), "max_body_bytes": 2048}
    meter = SteadyMeter(100.0, "gpu", name="nvml")
    with access_lines() as (text, _):
        async with (
            serving(FakeBackend(models=("m",))) as fake,
            joulegate(fake.url, deployed(meter), [metrics_endpoint], **settings) as jg,
            httpx.AsyncClient(base_url=jg.url) as c,
        ):
            refused = {
                400: await c.post("/v1/%2e%2e/etc/passwd", json=CHAT),
                405: await c.request("TRACE", "/v1/chat/completions"),
                413: await c.post("/v1/chat/completions", content=b"x" * 4096),
            }
            bad_json = await c.post("/v1/chat/completions", content=b"{nope")
            metrics = (await c.get("/metrics")).text
            seen = list(fake.seen)
    assert seen == []  # none of them reached the backend
    for status, r in {**refused, 4000: bad_json}.items():
        assert r.status_code == (status if status < 1000 else 400)
        assert len(r.headers["x-request-id"]) == 32
        assert r.headers["x-request-id"] in text.getvalue()  # one access line each
    counted = {
        line.split('status="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("joulegate_requests_total{")
    }
    assert counted["400"] == 2 and counted["405"] == 1 and counted["413"] == 1
    assert PROMPT not in text.getvalue()
