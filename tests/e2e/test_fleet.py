"""Many hosts, one ledger: two real ``joulegate serve`` processes on one PostgreSQL.

Two "hosts" (each its own process, port, data folder and fallback file) sit in front
of one fake OpenAI backend (``bench.serve fake``, its own process: this is about the
ledger, not the model) and share one PostgreSQL database through ``ledger.url``. The
client is the real ``openai`` SDK. What a fleet's users rely on: the report adds up
what both hosts' responses said, a key made anywhere works everywhere, a budget set
once binds every host, and an outage of PostgreSQL loses and doubles no request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from accounting.ledger.postgres import PG_SCHEMA_VERSION
from bench.pg import PgServer
from bench.serve import spawn
from tests.e2e.conftest import Joulegate, launch_joulegate

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi."}]
MODEL = "fake-model"
REFRESH_S = 0.2
"""``auth.refresh_s`` and ``ledger.retry_s`` of the hosts: keys, budgets and held rows
move within a fraction of a second, so the test need not wait long."""
SLOW = {"x-fake-delay-ms": "30"}
"""The fake answers at once; a 30 ms answer gives the estimate a window to measure."""


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """The fake OpenAI backend in its own process."""
    with spawn("bench.serve", "fake", "PORT") as url:
        yield url


def _create_database(server: PgServer, name: str) -> str:
    async def create() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return server.database_url(name)


def _fleet(url: str, fake_url: str, root: Path, **env: str) -> list[Joulegate]:
    hosts = []
    try:
        for name in ("host-a", "host-b"):
            data = root / name
            data.mkdir()
            hosts.append(
                launch_joulegate(
                    data,
                    {
                        "JOULEGATE_BACKEND_URL": fake_url,
                        "JOULEGATE_LEDGER_URL": url,
                        "JOULEGATE_LEDGER_FALLBACK_PATH": str(data / "pending.jsonl"),
                        "JOULEGATE_LEDGER_RETRY_S": str(REFRESH_S),
                        "JOULEGATE_AUTH_REFRESH_S": str(REFRESH_S),
                        "JOULEGATE_BUDGETS_REFRESH_S": str(REFRESH_S),
                        # One machine plays both hosts: each needs its own name.
                        "JOULEGATE_LEDGER_NODE_NAME": name,
                        **env,
                    },
                )
            )
    except BaseException:
        for jg in hosts:
            jg.stop()
        raise
    return hosts


@pytest.fixture(scope="module")
def fleet(
    pg_server: PgServer, fake_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Joulegate, Joulegate, str]]:
    """Two hosts in keys mode on one database; yields both and the database's URL."""
    url = _create_database(pg_server, "fleet")
    hosts = _fleet(url, fake_url, tmp_path_factory.mktemp("fleet"), JOULEGATE_AUTH_MODE="keys")
    # The hosts migrated the database: to this checkout's schema, so they run its code.
    assert scalar(url, "SELECT max(version) FROM schema_version") == PG_SCHEMA_VERSION
    yield hosts[0], hosts[1], url
    for jg in hosts:
        jg.stop()


def sdk(jg: Joulegate, key: str) -> OpenAI:
    return OpenAI(
        base_url=jg.base_url, api_key=key, max_retries=0, timeout=30, default_headers=SLOW
    )


def new_key(jg: Joulegate, user: str) -> str:
    done = jg.cli("keys", "create", "--user", user)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def chat(client: OpenAI, *, stream: bool = False) -> tuple[str, float]:
    """One request; the request id joulegate answered with and the energy it said."""
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HI, max_tokens=4
        )
        energy = (raw.parse().model_extra or {})["energy"]
        return raw.headers["x-request-id"], float(energy["energy_j"])
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HI, max_tokens=4, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    (energy,) = [e for c in chunks if (e := (c.model_extra or {}).get("energy"))]
    return request_id, float(energy["energy_j"])


def ledger_rows(url: str, request_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The ledger's rows for these request ids, grouped by id."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(
                await conn.fetch(
                    "SELECT * FROM requests WHERE request_id = ANY($1::text[])", request_ids
                )
            )
        finally:
            await conn.close()

    out: dict[str, list[dict[str, Any]]] = {}
    for record in asyncio.run(fetch()):
        out.setdefault(record["request_id"], []).append(dict(record))
    return out


def test_the_report_adds_up_what_both_hosts_said_and_a_key_works_on_both(
    fleet: tuple[Joulegate, Joulegate, str],
) -> None:
    a, b, url = fleet
    key = new_key(a, "alice")  # made on host A, after both hosts started
    said: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    with sdk(a, key) as on_a, sdk(b, key) as on_b:
        for n in range(6):
            for name, client in (("a", on_a), ("b", on_b)):
                request_id, energy_j = chat(client, stream=n % 2 == 1)
                said[name][request_id] = energy_j
    assert all(e > 0 for host in said.values() for e in host.values())

    with sdk(b, "jg-nope") as stranger, pytest.raises(openai.AuthenticationError):
        chat(stranger)  # host B does check keys: alice's worked because it knows it

    # Each host's responses are in the ledger once each, alice's, with the energy they
    # said, and under the name of the host that answered.
    for name, host in said.items():
        rows = ledger_rows(url, list(host))
        assert {i: len(r) for i, r in rows.items()} == dict.fromkeys(host, 1)
        assert {r[0]["host"] for r in rows.values()} == {f"host-{name}"}
        assert {(r[0]["user"], r[0]["key_prefix"]) for r in rows.values()} == {("alice", key[:11])}
        assert sum(r[0]["energy_j"] for r in rows.values()) == pytest.approx(
            sum(host.values()), abs=1e-5
        )
    total_j = sum(sum(host.values()) for host in said.values())
    report = b.cli("report", "--user", "alice", "--format", "json", "--unit", "J")
    assert report.returncode == 0, report.stderr
    cli = json.loads(report.stdout)
    # The body rounds each figure to 1e-6 J; twelve of them stay within 1e-5 J.
    assert cli["totals"]["energy_j"] == pytest.approx(total_j, abs=1e-5)
    assert cli["totals"]["requests"] == 12
    for jg in (a, b):  # either host's report endpoint says the same
        http = httpx.get(jg.url + "/v1/energy/report", params={"unit": "J"},
                         headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert http.status_code == 200, http.text
        assert http.json()["totals"]["energy_j"] == pytest.approx(total_j, abs=1e-5)


def set_budget(jg: Joulegate, user: str) -> None:
    """A daily energy budget smaller than any one request's energy."""
    done = jg.cli("users", "set-budget", user, "--energy-wh", "0.000000001", "--period", "day")
    assert done.returncode == 0, done.stderr


def served_until_refused(client: OpenAI, deadline_s: float = 30.0) -> int:
    """Requests until the first 429; how many were answered with the budget known."""
    deadline = time.monotonic() + deadline_s
    answered = 0
    while time.monotonic() < deadline:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=HI, max_tokens=2
            )
        except openai.RateLimitError as exc:
            assert exc.response.json()["error"]["type"] == "energy_budget_exceeded"
            return answered
        answered += "x-energy-budget-remaining-wh" in raw.headers
        time.sleep(REFRESH_S / 4)
    raise AssertionError("never refused")


def test_a_budget_set_once_is_enforced_by_both_hosts(
    fleet: tuple[Joulegate, Joulegate, str],
) -> None:
    a, b, _ = fleet
    key = new_key(a, "carol")
    set_budget(a, "carol")  # once, through host A's CLI, before carol spends anything
    with sdk(a, key) as on_a, sdk(b, key) as on_b:
        # Each host picks the budget up within auth.refresh_s: at most the request that
        # crosses it is answered, then the host refuses. Host B never saw a CLI call.
        assert served_until_refused(on_a) <= 1
        assert served_until_refused(on_b) <= 1
        for client in (on_a, on_b):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)


def test_spending_on_one_host_counts_against_the_budget_on_the_other(
    fleet: tuple[Joulegate, Joulegate, str],
) -> None:
    a, b, _ = fleet
    key = new_key(a, "dave")
    set_budget(a, "dave")
    with sdk(a, key) as on_a, sdk(b, key) as on_b:
        served_until_refused(on_a)  # dave's budget is spent, all of it on host A
        time.sleep(5 * REFRESH_S)  # ample time for host B to have read the budget too
        try:
            on_b.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
            status = 200
        except openai.RateLimitError as exc:
            status = exc.status_code
    assert status == 429, "host B admitted a user whose budget host A had spent"


Answer = tuple[str | None, int | str, float]
"""A request of the load: joulegate's request id, the status (or the error), when it ended."""


async def _load(
    hosts: list[Joulegate], stop: asyncio.Event, workers_per_host: int = 3
) -> list[Answer]:
    """Requests to every host from a few clients each, until ``stop``."""
    out: list[Answer] = []

    async def worker(client: AsyncOpenAI) -> None:
        while not stop.is_set():
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=HI, max_tokens=3
                )
                raw.parse()
                out.append((raw.headers.get("x-request-id"), raw.status_code, time.monotonic()))
            except openai.APIStatusError as exc:
                rid = exc.response.headers.get("x-request-id")
                out.append((rid, exc.status_code, time.monotonic()))
            except openai.APIError as exc:
                out.append((None, type(exc).__name__, time.monotonic()))

    clients = [
        AsyncOpenAI(base_url=jg.base_url, api_key="unused", max_retries=0, timeout=30,
                    default_headers={"x-fake-delay-ms": "10"})
        for jg in hosts
    ]  # fmt: skip
    try:
        await asyncio.gather(*(worker(c) for c in clients for _ in range(workers_per_host)))
    finally:
        for c in clients:
            await c.close()
    return out


async def _ledger_ok(jg: Joulegate, c: httpx.AsyncClient) -> bool:
    """Whether ``/readyz`` finds the host's ledger writing to PostgreSQL."""
    ready = await c.get(jg.url + "/readyz")
    (check,) = [x for x in ready.json()["checks"] if x["name"] == "ledger"]
    return bool(check["ok"])


def scalar(url: str, sql: str) -> int:
    """One number from the database."""

    async def fetch() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


async def test_stopping_postgresql_mid_load_loses_and_doubles_nothing(
    own_pg_server: PgServer, fake_url: str, tmp_path: Path
) -> None:
    url = await asyncio.to_thread(_create_database, own_pg_server, "outage")
    hosts = await asyncio.to_thread(_fleet, url, fake_url, tmp_path, JOULEGATE_AUTH_MODE="open")
    try:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(hosts, stop))
        async with httpx.AsyncClient(timeout=10) as c:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_pg_server.stop, "fast")  # mid-load, sessions cut
            down_s = time.monotonic()
            await asyncio.sleep(0.5)
            noticed = [not await _ledger_ok(jg, c) for jg in hosts]
            await asyncio.sleep(1.0)
            up_s = time.monotonic()
            await asyncio.to_thread(own_pg_server.start)
            await asyncio.sleep(1.0)
            stop.set()
            answers = await load
            deadline = time.monotonic() + 30
            while not all([await _ledger_ok(jg, c) for jg in hosts]):
                assert time.monotonic() < deadline, "the hosts never left degraded mode"
                await asyncio.sleep(REFRESH_S)
    finally:
        for jg in hosts:
            await asyncio.to_thread(jg.stop)
    assert noticed == [True, True], "the hosts never noticed the outage: nothing was tested"
    assert [a for a in answers if a[1] != 200] == [], "requests failed during the outage"
    served = [rid for rid, _, _ in answers if rid is not None]
    assert len(served) == len(answers) > 50
    assert sum(down_s < t < up_s for _, _, t in answers) > 10, "nothing was served while down"
    rows = await asyncio.to_thread(ledger_rows, url, served)
    assert {i: len(r) for i, r in rows.items()} == dict.fromkeys(served, 1)
    count = "SELECT count(*) FROM requests"
    assert await asyncio.to_thread(scalar, url, count) == len(served)  # nor rows from nowhere
    for jg in hosts:
        assert not (jg.data_dir / "pending.jsonl").exists()
        assert "failed in on_finished" not in jg.log  # a row the ledger let fall
