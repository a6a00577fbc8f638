"""The task tag: header or ``metadata.task`` → ledger, reports, spans, bounded metric label."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from config import ConfigError, LedgerSettings, TelemetrySettings
from proxy.cli import main
from proxy.observability.metrics import metrics_endpoint, prometheus_component
from proxy.observability.telemetry import telemetry_component
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components, db_rows
from tests.support.serving import JoulegateApp
from tests.support.telemetry import FakeEnergy, FinishLine, component, joulegate


def chat(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            **extra}  # fmt: skip


async def test_header_and_metadata_tags_reach_the_ledger_and_the_reports(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "l.sqlite3"
    async with (
        joulegate_app(
            fake.url, accounting_components(), ledger=LedgerSettings(path=str(path))
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        sent = [
            await c.post("/v1/chat/completions", json=chat(), headers={"x-joulegate-task": "sql"}),
            await c.post("/v1/chat/completions", json=chat(metadata={"task": "math"})),
            await c.post(
                "/v1/chat/completions",
                json=chat(metadata={"task": "math"}),
                headers={"x-joulegate-task": "code"},
            ),
            await c.post("/v1/chat/completions", json=chat(metadata={"user_tag": "x"})),
            await c.post("/v1/chat/completions", json=chat(), headers={"x-joulegate-task": "sql"}),
        ]
        report = (await c.get("/v1/energy/report", params={"by": "task", "unit": "J"})).json()
    assert [r.status_code for r in sent] == [200] * 5
    assert [row["task"] for row in db_rows(path)] == ["sql", "math", "code", None, "sql"]
    groups = {g["task"]: g["requests"] for g in report["groups"]}
    assert groups == {"(none)": 1, "code": 1, "math": 1, "sql": 2}
    assert report["totals"]["requests"] == 5

    capsys.readouterr()
    argv = ["report", "--ledger", str(path), "--by", "task", "--format", "json"]
    assert await asyncio.to_thread(main, argv) == 0  # the CLI runs its own event loop
    cli = json.loads(capsys.readouterr().out)
    assert {g["task"]: g["requests"] for g in cli["groups"]} == groups


@pytest.mark.parametrize(
    ("headers", "body_extra", "param"),
    [
        ({"x-joulegate-task": "Code Review"}, {}, "x-joulegate-task"),
        ({"x-joulegate-task": "x" * 41}, {}, "x-joulegate-task"),
        ({"x-joulegate-task": ""}, {}, "x-joulegate-task"),
        ({}, {"metadata": {"task": "ünïcode"}}, "metadata.task"),
        ({}, {"metadata": {"task": 7}}, "metadata.task"),
    ],
)
async def test_a_bad_task_is_a_400_naming_it_and_never_reaches_the_backend(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    headers: dict[str, str],
    body_extra: dict[str, object],
    param: str,
) -> None:
    path = tmp_path / "l.sqlite3"
    async with (
        joulegate_app(
            fake.url, accounting_components(), ledger=LedgerSettings(path=str(path))
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat(**body_extra), headers=headers)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert "x-joulegate-task" in err["message"]
    assert fake.seen == [] and db_rows(path) == []


async def test_spans_carry_the_task_and_metrics_bound_it(fake: FakeBackend) -> None:
    spans, done = InMemorySpanExporter(), FinishLine()
    parts = [telemetry_component(span_exporter=spans), prometheus_component,
             component(FakeEnergy()), component(done)]  # fmt: skip
    tasks = ["code", "summaries", "made-up-1", "made-up-2", None]
    settings = {"telemetry": TelemetrySettings(metric_tasks=("summaries",))}
    async with (
        joulegate(fake.url, parts, [metrics_endpoint], **settings) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        for task in tasks:
            headers = {"x-joulegate-task": task} if task else {}
            r = await c.post("/v1/chat/completions", json=chat(), headers=headers)
            assert r.status_code == 200
        await done.wait(len(tasks))
        text = (await c.get("/metrics")).text
    span_tasks = [(s.attributes or {}).get("joulegate.task") for s in spans.get_finished_spans()
                  if s.kind.name == "SERVER"]  # fmt: skip
    assert span_tasks == tasks
    counted: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "joulegate_energy_joules_total" and s.labels["component"] == "total":
                counted[s.labels["task"]] = counted.get(s.labels["task"], 0) + 1
    assert set(counted) == {"code", "summaries", "other", "none"}


def test_metric_tasks_must_be_task_names() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.metric_tasks"):
        TelemetrySettings(metric_tasks=("Bad Name",))
