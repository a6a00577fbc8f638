"""The shipped Grafana dashboard asks only for series joulegate's ``/metrics`` serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from accounting import SqliteLedger
from accounting.auth import KeyStore
from config import AuthSettings, LedgerSettings
from proxy.observability.metrics import metrics_endpoint
from tests.support.fake_backend import FakeBackend, serving
from tests.support.meters import SteadyMeter
from tests.support.telemetry import deployed, joulegate

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "joulegate.json"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

# PromQL words that are not metric names (functions are told by the "(" after them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "and", "or", "unless", "inf", "nan"}  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric identifiers a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges: [5m], [$__rate_interval]
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    expr = re.sub(r"(?<![\w:])\d[\w.]*", "", expr)  # numbers and durations (5m)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in _IDENT.finditer(expr):
        rest = expr[m.end() :].lstrip()
        if m.group() not in _KEYWORDS and not rest.startswith("("):
            names.add(m.group())
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and query variable."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for p in panels:
            for t in p.get("targets", []):
                yield f"panel {p['title']!r}", t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dashboard["panels"])
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            assert m, q
            yield f"variable {v['name']!r}", m.group(1)


def test_the_expression_parser_finds_metrics_and_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{x=~"b|c"}[$__range])))'
        " / on (model) group_left sum without (user) (b_total offset 5m) * 3600 + c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


async def test_every_dashboard_query_names_a_metric_joulegate_exports(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        admin, _ = await KeyStore(ledger).create("root", admin=True)
    settings = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    headers = {"authorization": f"Bearer {admin}"}
    async with (
        serving(FakeBackend(models=("m",))) as fake,
        joulegate(
            fake.url, deployed(SteadyMeter(50.0, "gpu")), [metrics_endpoint], **settings
        ) as jg,
        httpx.AsyncClient(base_url=jg.url, headers=headers) as c,
    ):
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert r.status_code == 200
        assert (await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": ""})
                ).status_code == 401  # fmt: skip
        text = (await c.get("/metrics")).text
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(s.name for s in family.samples)

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used: set[str] = set()
    for where, expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported"
        used |= names
    # What the dashboard promises to show: energy, CO2e, power, queue, refusals, tokens.
    assert {"joulegate_energy_joules_total", "joulegate_co2e_grams_total",
            "joulegate_power_watts", "joulegate_queue_length", "joulegate_requests_total",
            "joulegate_tokens_total"} <= used  # fmt: skip
