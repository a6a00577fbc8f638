"""Telemetry from a real ``joulegate serve`` in front of llama.cpp.

The operator's view: the process is configured with nothing but ``OTEL_*``
variables, and every LLM request arrives at their collector as a trace with
its energy, while ``/metrics`` counts exactly the energy the responses reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import MODEL, Joulegate
from tests.support.telemetry import Collector, attributes, serve_in_thread

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HI = [{"role": "user", "content": "Say hi."}]


def energy_counter(jg: Joulegate) -> float:
    text = httpx.get(jg.url + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "joulegate_energy_joules_total" and s.labels["component"] == "total"
    )


def test_requests_reach_the_collector_with_their_energy(
    start_joulegate: Callable[..., Joulegate],
) -> None:
    collector = Collector()
    with serve_in_thread(collector) as collector_url:
        jg = start_joulegate(
            OTEL_EXPORTER_OTLP_ENDPOINT=collector_url,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_SERVICE_NAME="joulegate-e2e",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_EXPORTER_OTLP_TIMEOUT="2000",
        )
        before_j = energy_counter(jg)
        client = OpenAI(base_url=jg.base_url, api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HI, max_tokens=8, temperature=0,  # type: ignore[arg-type]
            extra_headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        )  # fmt: skip
        reported: dict[str, Any] = raw.parse().model_extra["energy"]  # type: ignore[index]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any(s.name == f"chat {MODEL}" for _, s in collector.spans())
            and collector.sums("joulegate.energy")
        ):
            time.sleep(0.1)
        after_j = energy_counter(jg)
        jg.proc.terminate()  # while the collector still listens for the final flush
        jg.proc.wait(30)

    spans = {s.name: (resource, s) for resource, s in collector.spans()}
    resource, backend_span = spans[f"chat {MODEL}"]
    assert resource["service.name"] == "joulegate-e2e"
    assert backend_span.trace_id.hex() == TRACE_ID
    attrs = attributes(backend_span.attributes)
    assert attrs["gen_ai.provider.name"] == "llama.cpp"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.usage.output_tokens"] >= 1
    assert attrs["joulegate.energy.meter"] == reported["meter"]
    assert attrs["joulegate.energy.estimated"] is reported["estimated"]
    assert attrs["joulegate.energy.total_j"] > 0
    assert abs(attrs["joulegate.energy.total_j"] - reported["energy_j"]) < 1e-5
    assert attrs["joulegate.co2e_g"] > 0
    assert collector.sums("joulegate.energy")["total"] > 0
    assert abs((after_j - before_j) - reported["energy_j"]) < 1e-5
    # The ledger row carries the trace id, so a row leads to its trace and back.
    export = jg.cli("export", "--format", "jsonl")
    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    assert [row["trace_id"] for row in rows] == [TRACE_ID]
