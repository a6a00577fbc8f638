"""A request whose response completed is in the ledger even if joulegate is then killed,
on either ledger (a SQLite file, or PostgreSQL as a fleet of hosts shares it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from accounting import LedgerRow
from accounting.ledger.sqlite import BACKSTOP_PAGES, SqliteLedger
from proxy.llamacpp import free_port
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store
from tests.support.serving import serve

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


def _rows_in_file_alone(path: Path, copy: Path) -> int:
    """Rows in the database file itself, without its WAL (what a copy of the file holds)."""
    copy.write_bytes(path.read_bytes())
    with contextlib.closing(sqlite3.connect(copy)) as db:
        count: int = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        return count


async def test_a_serving_ledger_moves_committed_rows_into_its_file_in_the_background(
    tmp_path: Path,
) -> None:
    """A commit no longer checkpoints the WAL (which held every ~200th answer a few ms):
    the serving ledger does it in the background, so the file catches up all the same."""
    path = tmp_path / "l.sqlite3"
    ledger = SqliteLedger(path, checkpoint_s=0.05)
    await ledger.open(serving=True)
    try:
        for n in range(30):
            await ledger.append(LedgerRow(request_id=f"c{n}", ts=f"2026-12-04T00:00:{n:02d}.0Z",
                                          endpoint="chat/completions"))  # fmt: skip
        deadline = asyncio.get_running_loop().time() + 5
        while _rows_in_file_alone(path, tmp_path / "copy.sqlite3") < 30:
            assert asyncio.get_running_loop().time() < deadline, "the WAL was never moved in"
            await asyncio.sleep(0.05)
        # What the commits themselves would do: only past the backstop, far beyond SQLite's
        # default of 1,000 pages.
        writer_pages = await ledger.writer_setting("wal_autocheckpoint")
    finally:
        await ledger.close()
    assert writer_pages == BACKSTOP_PAGES > 1000


async def test_a_ledger_opened_by_a_command_keeps_sqlites_own_checkpoints(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        assert await ledger.writer_setting("wal_autocheckpoint") == 1000
