"""A request whose response completed is in the ledger even if joulegate is then killed,
on either ledger (a SQLite file, or PostgreSQL as a fleet of hosts shares it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from proxy.llamacpp import free_port
from tests.fake_backend import FakeBackend
from tests.ledger_support import Store
from tests.support import serve

N = 24


async def test_sigkill_right_after_the_responses_loses_no_row(tmp_path: Path, store: Store) -> None:
    backend = FakeBackend()
    async with serve(backend, lifespan="off") as backend_url:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOULEGATE_", "OTEL_"))}
        env.update(
            JOULEGATE_BACKEND_URL=backend_url, JOULEGATE_PORT=str(port),
            JOULEGATE_AUTH_MODE="open",
            JOULEGATE_LOG_LEVEL="warning", OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
        )  # fmt: skip
        if store.kind == "sqlite":
            env["JOULEGATE_LEDGER_PATH"] = store.settings.path
        else:  # rows are counted in PostgreSQL only: one left in the fallback file fails
            env["JOULEGATE_LEDGER_URL"] = store.settings.url
            env["JOULEGATE_LEDGER_FALLBACK_PATH"] = str(tmp_path / "pending.jsonl")
        log = (tmp_path / "joulegate.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", env=env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=30) as c:
                for _ in range(300):
                    assert proc.returncode is None, (tmp_path / "joulegate.log").read_text()
                    try:
                        if (await c.get(base + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)

                async def one(i: int) -> int:
                    body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}],
                            "max_tokens": 3, "stream": i % 2 == 0}  # fmt: skip
                    r = await c.post(base + "/v1/chat/completions", json=body)
                    return r.status_code

                statuses = await asyncio.gather(*(one(i) for i in range(N)))
                proc.send_signal(signal.SIGKILL)  # the moment the last response is complete
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
            log.close()
    assert proc.returncode == -signal.SIGKILL
    assert statuses == [200] * N
    rows = await store.rows()
    assert len(rows) == N
    assert {r["status"] for r in rows} == {200}
    assert sum(r["stream"] for r in rows) == N // 2
