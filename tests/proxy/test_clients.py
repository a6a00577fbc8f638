"""Real clients read the energy: the docs' lines, run as written, against joulegate.

Each client's block in docs/guides/clients.md ("Reading the energy from each client") is run
against joulegate (in front of the fake backend, on a real loopback port), with the
docs' URL swapped for the test's; the figure it reads must be the ledger's for that
request. The OpenAI SDKs' retries are checked here too: a budget 429 is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accounting import LedgerRow, SqliteLedger, iso
from accounting.auth import KeyStore
from accounting.budgets import Budget, BudgetBook
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import AuthSettings, LedgerSettings, Settings
from meters import meters_component
from proxy.app import AppContext, Component, create_app
from proxy.exchange import Exchange, Stage
from tests.support.fake_backend import FakeBackend, serving
from tests.support.ledger import db_rows
from tests.support.meters import SteadyMeter
from tests.support.serving import serve

# LiteLLM fetches its price list from GitHub at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guides" / "clients.md"
NODE_DIR = ROOT / "tests" / "node"
DOCS_URL = "http://127.0.0.1:8400"
# Which docs block each table row's line must be in (by the row's first cell).
TABLE_CLIENTS = {
    "OpenAI Python": "openai-python",
    "OpenAI Node": "openai-node",
    "LangChain `ChatOpenAI`": "langchain",
    "LiteLLM SDK": "litellm",
    "`ollama` Python, on `/api/*` (`ollama_native = true`)": "ollama",
    "curl": "curl",
}


def section() -> str:
    """The Clients page of the docs, where the tested lines live."""
    return PAGE.read_text()


def docs_block(name: str) -> str:
    """The code block under ``<!-- client-test: name -->``."""
    found = re.search(
        rf"<!-- client-test: {re.escape(name)} -->\n```\w+\n(.*?)```", section(), re.S
    )
    assert found, f"docs/guides/clients.md has no block for {name}"
    return found.group(1)


def table_lines() -> list[tuple[str, str]]:
    """(first cell, the line that reads the energy) for each row of the section's table."""
    rows = []
    for line in section().splitlines():
        if not line.startswith("| ") or line.startswith(("| client", "| ---")):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        code = cells[-1].replace("\\|", "|").strip("`").strip()
        rows.append((cells[0], code))
    return rows


def test_every_line_in_the_readme_table_is_in_the_block_its_test_runs() -> None:
    rows = table_lines()
    assert {first for first, _ in rows} == set(TABLE_CLIENTS)
    for first, code in rows:
        assert code in docs_block(TABLE_CLIENTS[first]), (first, code)


# -- joulegate with real meters' figures, keys and a ledger ----------------------------------


class Arrivals(Stage):
    """Counts the requests that reach joulegate (placed first: refusals count too)."""

    name = "arrivals"

    def __init__(self) -> None:
        self.count = 0

    async def on_arrival(self, ex: Exchange) -> None:
        if ex.gated:
            self.count += 1


@dataclass
class Served:
    """joulegate under test: its URL, a key for alice, the ledger, the arrivals."""

    url: str
    key: str
    ledger_path: Path
    arrivals: Arrivals

    def energies_j(self) -> list[float]:
        """The ledger's energy of each request, oldest first."""
        return [r["energy_j"] for r in db_rows(self.ledger_path)]


@contextlib.asynccontextmanager
async def joulegate(tmp_path: Path, *, budget_spent: bool = False) -> AsyncIterator[Served]:
    path = tmp_path / "ledger.sqlite3"
    async with SqliteLedger(path) as ledger:
        key = (await KeyStore(ledger).create("alice"))[0]
        if budget_spent:
            await BudgetBook(ledger).set(Budget("alice", "day", energy_j=1.0))
            now = iso(dt.datetime.now(dt.UTC))
            spent = LedgerRow(
                request_id="spent", ts=now, user="alice", endpoint="chat/completions", energy_j=5.0
            )
            await ledger.append_many([spent])
    arrivals = Arrivals()

    @contextlib.asynccontextmanager
    async def counting(ctx: AppContext) -> AsyncIterator[Stage]:
        yield arrivals

    meter = SteadyMeter(150.0, "gpu", name="nvml")
    components: list[Component] = [
        accounting_resource,
        counting,
        auth_component,
        functools.partial(meters_component, meters=[meter]),
        record_component,
    ]
    # The SDKs' .stream() helpers refuse an answer cut off at max_tokens.
    async with serving(FakeBackend(finish_reason="stop")) as fake:
        settings = Settings(
            backend_url=fake.url,  # type: ignore[attr-defined]
            ollama_native=True,
            ledger=LedgerSettings(path=str(path)),
            auth=AuthSettings(mode="keys"),
        )
        async with serve(create_app(settings, components=components)) as url:
            yield Served(url, key, path, arrivals)


def run_python(block: str, served: Served) -> dict[str, Any]:
    """Run a docs block as a script (in a thread: joulegate serves on this loop)."""
    namespace: dict[str, Any] = {"KEY": served.key}
    exec(compile(block.replace(DOCS_URL, served.url), "docs/guides/clients.md", "exec"), namespace)
    return namespace


async def test_openai_python(tmp_path: Path) -> None:
    async with joulegate(tmp_path) as served:
        ns = await asyncio.to_thread(run_python, docs_block("openai-python"), served)
    assert_read(served, [ns["energy_j"], ns["stream_energy_j"], ns["helper_energy_j"]])
    assert "energy" not in ns["final"].model_extra  # as the docs say: hence the look-up


async def test_langchain_chat_openai(tmp_path: Path) -> None:
    async with joulegate(tmp_path) as served:
        ns = await asyncio.to_thread(run_python, docs_block("langchain"), served)
    assert_read(served, [ns["energy_j"], ns["stream_energy_j"]], header=0)


async def test_litellm_sdk(tmp_path: Path) -> None:
    async with joulegate(tmp_path) as served:
        ns = await asyncio.to_thread(run_python, docs_block("litellm"), served)
    assert_read(served, [ns["energy_j"], ns["stream_energy_j"]])


async def test_ollama_python_client_on_the_native_api(tmp_path: Path) -> None:
    async with joulegate(tmp_path) as served:
        ns = await asyncio.to_thread(run_python, docs_block("ollama"), served)
        ns["client"].close()  # unlike the OpenAI SDK's, its HTTP client is not closed when freed
    assert_read(served, [ns["energy_j"], ns["stream_energy_j"]])
    assert "energy" not in ns["reply"].model_dump()  # as the docs say: hence the look-up
    assert [r["endpoint"] for r in db_rows(served.ledger_path)] == ["chat", "chat"]


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
async def test_curl(tmp_path: Path) -> None:
    async with joulegate(tmp_path) as served:
        out = await run(["bash", "-c", docs_block("curl").replace(DOCS_URL, served.url)],
                        env={**os.environ, "KEY": served.key})  # fmt: skip
    assert_read(served, [float(out)])


def assert_read(served: Served, read_j: list[float], header: int | None = None) -> None:
    """What the client read is each request's energy in the ledger, in order.

    The body rounds to the µJ; the ``x-energy-j`` header (row ``header``) to the mJ.
    """
    recorded = served.energies_j()
    assert len(recorded) == len(read_j)
    for i, (got, want) in enumerate(zip(read_j, recorded, strict=True)):
        assert want > 0
        assert got == pytest.approx(want, abs=5e-4 if i == header else 5e-7), i


# -- Node ------------------------------------------------------------------------------------


async def run(args: list[str], **kw: Any) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """tests/node with the pinned OpenAI Node SDK installed (``npm ci``, once a session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("the OpenAI Node SDK tests need node and npm on PATH")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=NODE_DIR, check=True, capture_output=True, timeout=300)  # fmt: skip
    return NODE_DIR


async def run_node(node_dir: Path, script: str, served: Served) -> Any:
    """Run an ES module with the SDK importable; it prints one JSON line last.

    A script still running after :data:`NODE_HANG_S` is killed: an SDK that sleeps until
    a budget resets would otherwise hold the test for hours.
    """
    source = f"const KEY = {json.dumps(served.key)};\n" + script.replace(DOCS_URL, served.url)
    proc = await asyncio.create_subprocess_exec(
        "node", "--input-type=module", "-", cwd=node_dir,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(source.encode()), NODE_HANG_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node had not returned after {NODE_HANG_S} s (sleeping to retry?)")
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


NODE_HANG_S = 120


async def test_openai_node(node_sdk: Path, tmp_path: Path) -> None:
    script = docs_block("openai-node") + (
        "console.log(JSON.stringify([energyJ, streamEnergyJ, helperEnergyJ]));\n"
    )
    async with joulegate(tmp_path) as served:
        read = await run_node(node_sdk, script, served)
    assert_read(served, read)


NODE_OVER_BUDGET = """
import OpenAI from "openai";

const client = new OpenAI({ baseURL: "http://127.0.0.1:8400/v1", apiKey: KEY });
try {
  await client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "hi" }] });
  console.log(JSON.stringify({ answered: true }));
} catch (err) {
  console.log(JSON.stringify({
    rateLimit: err instanceof OpenAI.RateLimitError, status: err.status, code: err.code,
    maxRetries: client.maxRetries,
  }));
}
"""


async def test_openai_node_with_default_retries_gives_up_on_a_budget_429(
    node_sdk: Path, tmp_path: Path
) -> None:
    async with joulegate(tmp_path, budget_spent=True) as served:
        result = await run_node(node_sdk, NODE_OVER_BUDGET, served)
    assert result == {"rateLimit": True, "status": 429, "code": "energy_budget_exceeded",
                      "maxRetries": 2}  # fmt: skip
    assert served.arrivals.count == 1  # one request, no retries (it would sleep till reset)


async def test_openai_python_with_default_retries_gives_up_on_a_budget_429(
    tmp_path: Path,
) -> None:
    import openai

    def ask(served: Served) -> openai.RateLimitError:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key)
        assert client.max_retries == 2
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        return caught.value

    async with joulegate(tmp_path, budget_spent=True) as served:
        err = await asyncio.to_thread(ask, served)
    assert err.status_code == 429 and err.code == "energy_budget_exceeded"
    assert served.arrivals.count == 1  # one request, no retries
