"""``GET /metrics``, read with the Prometheus client's own text parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from accounting import SqliteLedger
from accounting.auth import KeyStore
from accounting.budgets import Budget, BudgetBook
from config import AuthSettings, LedgerSettings, TelemetrySettings
from proxy.context import Component
from proxy.observability.metrics import metrics_endpoint, prometheus_component
from tests.support.fake_backend import FakeBackend, serving
from tests.support.ledger import accounting_components
from tests.support.meters import SteadyMeter
from tests.support.telemetry import (
    FakeEnergy,
    FinishLine,
    HeaderUser,
    component,
    deployed,
    joulegate,
    powering,
    until,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    """The fake backend, listing the model these tests ask for (``m``)."""
    async with serving(FakeBackend(models=("m",))) as backend:
        yield backend


async def scrape(c: httpx.AsyncClient, url: str) -> Samples:
    r = await c.get(url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series with these labels (any others summed over,
    as PromQL's ``sum by`` would)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def reported_energy(r: httpx.Response) -> dict[str, Any]:
    """The ``energy`` object, from a JSON body or a stream's last data chunk."""
    if r.headers["content-type"].startswith("application/json"):
        return r.json()["energy"]  # type: ignore[no-any-return]
    chunks = [json.loads(block[6:]) for block in r.text.replace("\r\n", "\n").split("\n\n")
              if block.startswith("data: {")]  # fmt: skip
    return chunks[-1]["energy"]  # type: ignore[no-any-return]


def parts(energy: FakeEnergy, done: FinishLine) -> list[Component]:
    return [prometheus_component, component(HeaderUser()), component(energy), component(done)]


async def test_counters_rise_by_exactly_the_energy_the_responses_reported(
    fake: FakeBackend,
) -> None:
    energy, done = FakeEnergy(), FinishLine()
    async with (
        joulegate(fake.url, parts(energy, done), [metrics_endpoint]) as jg,
        httpx.AsyncClient() as c,
    ):
        before = await scrape(c, jg.url)
        reported: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}
        for user, stream in (("alice", False), ("bob", True), ("alice", True), ("bob", False)):
            r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                             headers={"x-user": user})  # fmt: skip
            assert r.status_code == 200
            reported[user].append(reported_energy(r))
        failed = await c.post(jg.url + "/v1/chat/completions", json=CHAT,
                              headers={"x-user": "bob", "x-fake-status": "500"})  # fmt: skip
        models = await c.get(jg.url + "/v1/models")
        await done.wait(6)
        after = await scrape(c, jg.url)

    assert (failed.status_code, models.status_code) == (500, 200)
    for user, answers in reported.items():
        for component_name in ("total", "gpu", "cpu"):
            labels = {"user": user, "model": "m", "task": "none", "component": component_name}
            rise = get(after, "joulegate_energy_joules_total", **labels) - get(
                before, "joulegate_energy_joules_total", **labels
            )
            # The 500 used energy too (request 5: 6.25 J); it was reported in no body.
            extra = {"total": 6.25, "gpu": 5.0, "cpu": 1.25}[component_name] if user == "bob" else 0
            assert rise == sum(_component_j(a, component_name) for a in answers) + extra
        co2e = get(
            after,
            "joulegate_co2e_grams_total",
            user=user,
            model="m",
            task="none",
            component="total",
        )
        assert co2e == sum(a["co2e_g"] for a in answers) + (0.625 if user == "bob" else 0)

    requests = {(dict(labels)["user"], dict(labels)["endpoint"], dict(labels)["status"]): v
                for (name, labels), v in after.items()
                if name == "joulegate_requests_total"}  # fmt: skip
    assert requests == {
        ("alice", "chat/completions", "200"): 2,
        ("bob", "chat/completions", "200"): 2,
        ("bob", "chat/completions", "500"): 1,
        ("anonymous", "models", "200"): 1,
    }
    count = get(after, "joulegate_request_duration_seconds_count",
                model="m", endpoint="chat/completions")  # fmt: skip
    assert count == 5
    assert get(after, "joulegate_request_duration_seconds_bucket",
               model="m", endpoint="chat/completions", le="+Inf") == 5  # fmt: skip


async def test_queue_length_shows_requests_waiting_for_a_slot(fake: FakeBackend) -> None:
    energy, done = FakeEnergy(), FinishLine()
    async with (
        joulegate(fake.url, parts(energy, done), [metrics_endpoint]) as jg,
        httpx.AsyncClient(timeout=10) as c,
    ):
        idle = await scrape(c, jg.url)
        slow = [asyncio.ensure_future(c.post(jg.url + "/v1/chat/completions", json=CHAT,
                                             headers={"x-fake-delay-ms": "400"}))
                for _ in range(3)]  # fmt: skip
        await until(lambda: jg.gate.waiting == 2)
        busy = await scrape(c, jg.url)
        await asyncio.gather(*slow)
        await done.wait(3)
        after = await scrape(c, jg.url)
    assert get(idle, "joulegate_queue_length") == 0
    assert (get(busy, "joulegate_queue_length"), get(busy, "joulegate_in_flight")) == (2, 1)
    assert (get(after, "joulegate_queue_length"), get(after, "joulegate_in_flight")) == (0, 0)


async def test_the_user_label_can_be_switched_off(fake: FakeBackend) -> None:
    energy, done = FakeEnergy(), FinishLine()
    settings = TelemetrySettings(metrics_user_label=False)
    async with (
        joulegate(fake.url, parts(energy, done), [metrics_endpoint], telemetry=settings) as jg,
        httpx.AsyncClient() as c,
    ):
        for user in ("alice", "bob"):
            await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-user": user})
        await done.wait(2)
        samples = await scrape(c, jg.url)
    joulegate_series = [dict(labels) for (name, labels) in samples if name.startswith("joulegate_")]
    assert joulegate_series and all("user" not in labels for labels in joulegate_series)
    assert (
        get(samples, "joulegate_energy_joules_total", model="m", task="none", component="total")
        == 3.75
    )
    assert get(samples, "joulegate_requests_total",
               model="m", endpoint="chat/completions", status="200") == 2  # fmt: skip


async def test_each_app_has_its_own_registry(fake: FakeBackend) -> None:
    first, second = (FakeEnergy(), FinishLine()), (FakeEnergy(), FinishLine())
    async with (
        joulegate(fake.url, parts(*first), [metrics_endpoint]) as a,
        joulegate(fake.url, parts(*second), [metrics_endpoint]) as b,
        httpx.AsyncClient() as c,
    ):
        await c.post(a.url + "/v1/chat/completions", json=CHAT)
        await first[1].wait(1)
        seen_a, seen_b = await scrape(c, a.url), await scrape(c, b.url)
    key = {"user": "anonymous", "model": "m", "task": "none", "component": "total"}
    assert get(seen_a, "joulegate_energy_joules_total", **key) == 1.25
    assert get(seen_b, "joulegate_energy_joules_total", **key) == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("joulegate")]


async def test_openmetrics_is_served_to_scrapers_that_ask_for_it(fake: FakeBackend) -> None:
    async with (
        joulegate(fake.url, [prometheus_component], [metrics_endpoint]) as jg,
        httpx.AsyncClient() as c,
    ):
        accept = "application/openmetrics-text; version=1.0.0"
        r = await c.get(jg.url + "/metrics", headers={"accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "joulegate_queue_length 0" in r.text


async def test_metrics_without_the_component_is_a_clean_404(fake: FakeBackend) -> None:
    async with joulegate(fake.url, [], [metrics_endpoint]) as jg, httpx.AsyncClient() as c:
        r = await c.get(jg.url + "/metrics")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


async def keys(path: Path) -> tuple[str, str]:
    """An admin key and a plain user's key in a fresh ledger."""
    async with SqliteLedger(path) as ledger:
        store = KeyStore(ledger)
        admin, _ = await store.create("root", admin=True)
        alice, _ = await store.create("alice")
    return admin, alice


def auth_parts() -> list[Component]:
    return [*accounting_components(), prometheus_component]


async def test_keys_mode_asks_for_an_admin_key(fake: FakeBackend, tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    admin, alice = await keys(path)
    settings = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    async with (
        joulegate(fake.url, auth_parts(), [metrics_endpoint], **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        chat = await c.post("/v1/chat/completions", json=CHAT,
                            headers={"authorization": f"Bearer {alice}"})  # fmt: skip
        missing = await c.get("/metrics")
        wrong = await c.get("/metrics", headers={"authorization": f"Bearer {admin[:-1]}x"})
        plain = await c.get("/metrics", headers={"authorization": f"Bearer {alice}"})
        ok = await c.get("/metrics", headers={"authorization": f"Bearer {admin}"})
    assert chat.status_code == 200
    for r, status, kind, code in (
        (missing, 401, "authentication_error", "missing_api_key"),
        (wrong, 401, "authentication_error", "invalid_api_key"),
        (plain, 403, "permission_error", "forbidden"),
    ):
        assert r.status_code == status
        assert r.json()["error"]["type"] == kind and r.json()["error"]["code"] == code
        assert "alice" not in r.text
    assert ok.status_code == 200
    assert any(
        line.startswith("joulegate_requests_total{")
        and 'endpoint="chat/completions"' in line
        and 'model="m"' in line
        for line in ok.text.splitlines()
    )
    assert 'user="alice"' in ok.text


async def test_metrics_public_and_open_mode_need_no_key(fake: FakeBackend, tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    await keys(path)
    public = {
        "ledger": LedgerSettings(path=str(path)),
        "auth": AuthSettings(mode="keys"),
        "telemetry": TelemetrySettings(metrics_public=True),
    }
    opened = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="open")}
    for settings in (public, opened):
        async with (
            joulegate(fake.url, auth_parts(), [metrics_endpoint], **settings) as jg,
            httpx.AsyncClient(base_url=jg.url) as c,
        ):
            r = await c.get("/metrics")
        assert r.status_code == 200 and "joulegate_queue_length 0" in r.text


async def test_refusals_and_tokens_are_counted_in_the_deployed_pipeline(
    fake: FakeBackend, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    admin, alice = await keys(path)
    async with SqliteLedger(path) as ledger:  # alice's first request uses up her day's energy
        await BudgetBook(ledger).set(Budget("alice", "day", 1e-9, None))
    settings = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    as_alice = {"authorization": f"Bearer {alice}"}
    async with (
        joulegate(
            fake.url, deployed(SteadyMeter(100.0, "gpu")), [metrics_endpoint], **settings
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        no_key = await c.post("/v1/chat/completions", json=CHAT)
        ok = await c.post("/v1/chat/completions", json=CHAT, headers=as_alice)
        over = await c.post("/v1/chat/completions", json=CHAT, headers=as_alice)
        r = await c.get("/metrics", headers={"authorization": f"Bearer {admin}"})
    assert (no_key.status_code, ok.status_code, over.status_code) == (401, 200, 429)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    requests = {(dict(labels)["user"], dict(labels)["status"]): v
                for (name, labels), v in samples.items()
                if name == "joulegate_requests_total"}  # fmt: skip
    assert requests == {("anonymous", "401"): 1, ("alice", "200"): 1, ("alice", "429"): 1}
    usage = ok.json()["usage"]
    assert (
        get(samples, "joulegate_tokens_total", model="m", type="prompt") == usage["prompt_tokens"]
    )
    assert (
        get(samples, "joulegate_tokens_total", model="m", type="completion")
        == usage["completion_tokens"]
    )
    assert "# TYPE joulegate_power_watts gauge" in r.text


@dataclass
class FakePower:
    """The sampler's live view as the meters component publishes it."""

    watts: dict[str, float | None]
    unattributed_j: float = 0.0

    def power_w(self, over_s: float = 1.0) -> dict[str, float | None]:
        return self.watts

    def device_readings(self) -> list[dict[str, float | str | None]]:
        return []


async def test_power_gauge_shows_each_component_the_meters_read_now(fake: FakeBackend) -> None:
    power = FakePower({"gpu": 212.5, "cpu": 37.25, "dram": None})
    async with (
        joulegate(fake.url, [prometheus_component, powering(power)], [metrics_endpoint]) as jg,
        httpx.AsyncClient() as c,
    ):
        first = await scrape(c, jg.url)
        power.watts = {"gpu": 80.0, "cpu": 12.0, "dram": None}
        power.unattributed_j = 42.5
        second = await scrape(c, jg.url)
    for seen, gpu_w, cpu_w in ((first, 212.5, 37.25), (second, 80.0, 12.0)):
        power_series = {dict(labels)["component"]: v for (name, labels), v in seen.items()
                        if name == "joulegate_power_watts"}  # fmt: skip
        assert power_series == {"gpu": gpu_w, "cpu": cpu_w}
    idle = "joulegate_unattributed_energy_joules_total"
    assert (first[(idle, frozenset())], second[(idle, frozenset())]) == (0.0, 42.5)


async def test_power_gauge_is_empty_without_meters(fake: FakeBackend) -> None:
    async with (
        joulegate(fake.url, [prometheus_component], [metrics_endpoint]) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.get(jg.url + "/metrics")
    assert "# TYPE joulegate_power_watts gauge" in r.text
    assert "\njoulegate_power_watts{" not in r.text


def _component_j(energy: dict[str, Any], component: str) -> float:
    """A response's energy in J, whole (``total``) or for one component."""
    part = energy if component == "total" else energy["components"][component]
    return float(part["energy_j"])
