"""The Playground in front of several machines: the power shown while an answer streams
is the serving machine's, and the queue is the gateway's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import AuthSettings
from meters import machines_component
from proxy.console import console_component
from tests.support.machines import gateway, loopback_machines

# The prompt's model is served by the second machine only; the first draws a third of it.
SPECS = [("rack-a", ("small",), 100.0), ("rack-b", ("large",), 300.0)]
OPEN = AuthSettings(mode="open")


def _components() -> list[Any]:
    return [accounting_resource, auth_component, machines_component, console_component,
            record_component]  # fmt: skip


async def _events(c: httpx.AsyncClient) -> list[tuple[str, Any]]:
    page = await c.get("/console/playground")
    csrf = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    prompt = {"model": "large", "prompt": "Say hi", "max_tokens": 4}
    out: list[tuple[str, Any]] = []
    name = ""
    async with c.stream("POST", "/console/api/chat", json=prompt,
                        headers={"x-csrf-token": csrf}) as stream:  # fmt: skip
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


async def test_the_power_while_streaming_is_the_serving_machines(tmp_path: Path) -> None:
    async with (
        loopback_machines(SPECS) as machines,
        gateway(machines, tmp_path / "l.db", components=_components(), auth=OPEN) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=30) as c,
    ):
        machines[1].backend.chunk_delay_s = 0.4  # 2 s for 5 words: ticks twice a second
        events = await _events(c)
        queue = (await c.get("/console/api/queue")).json()
    names = [n for n, _ in events]
    assert names[-1] == "done", events
    assert events[-1][1]["energy"]["machine"] == "rack-b"
    powers = [d["power_w"] for n, d in events if n == "tick" and d["power_w"] is not None]
    assert powers, events
    assert all(250 <= p <= 350 for p in powers), powers  # rack-b's 300 W, not rack-a's 100 W
    assert queue == {"in_flight": 0, "waiting": 0}
