"""The PostgreSQL ledger against a real server: schema, rows, idempotence, keys, reads."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, get_args

import asyncpg
import pytest

from accounting.ledger.postgres import PG_MIGRATIONS, PG_SCHEMA_VERSION, PostgresLedger, translate
from accounting.ledger.rows import COLUMNS, LedgerRow
from accounting.reports import By, build_report, parse_query
from bench.pg import PgServer

_names = itertools.count()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh database per test."""
    name = f"t{next(_names)}"
    conn = await asyncpg.connect(pg_server.url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield pg_server.database_url(name)


def row(n: int, user: str = "alice") -> LedgerRow:
    return LedgerRow(request_id=f"r{n}", ts=f"2025-03-01T00:00:{n:02d}.000000Z", user=user,
                     endpoint="chat/completions", energy_j=float(n), stream=True,
                     energy_components_j={"gpu": 1.0})  # fmt: skip


def test_sqlite_sql_is_translated() -> None:
    assert translate("SELECT user FROM budgets WHERE user = ? AND x = ?") == (
        'SELECT "user" FROM budgets WHERE "user" = $1 AND x = $2'
    )
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?)") == (
        "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
    )


def test_a_statement_is_translated_once_however_often_it_is_run() -> None:
    sql = "SELECT TOTAL(energy_j) FROM requests WHERE user = ? AND ts >= ?"
    first = translate(sql)
    hits = translate.cache_info().hits
    assert all(translate(sql) is first for _ in range(100))
    assert translate.cache_info().hits == hits + 100


async def test_rows_go_in_once_and_come_back(pg_url: str, tmp_path: Path) -> None:
    async with PostgresLedger(pg_url, fallback_path=tmp_path / "p.jsonl") as ledger:
        await ledger.append(row(1))
        await ledger.append(row(1))  # replayed: adds nothing
        await ledger.append_many([row(2, "bob"), row(3)])
        rows = [r async for r in ledger.iter_rows()]
        by_user = await ledger.fetchall(
            "SELECT user, COUNT(*) AS n, AVG(energy_j) FROM requests GROUP BY user ORDER BY user"
        )
        version = await ledger.fetchall("SELECT max(version) FROM schema_version")
    assert [r.request_id for r in rows] == ["r1", "r2", "r3"]
    assert rows[0].stream is True and rows[0].energy_components_j == {"gpu": 1.0}
    assert [(r["user"], r["n"], r[2]) for r in by_user] == [("alice", 2, 2.0), ("bob", 1, 2.0)]
    assert version[0][0] == PG_SCHEMA_VERSION


async def test_writes_bump_the_data_version(pg_url: str, tmp_path: Path) -> None:
    async with PostgresLedger(pg_url, fallback_path=tmp_path / "p.jsonl") as ledger:
        before = await ledger.data_version()
        changed = await ledger.write(
            "INSERT INTO budgets (user, period, energy_j, updated_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user) DO UPDATE SET period = excluded.period",
            ("alice", "day", 10.0, "2025-01-01T00:00:00.000000Z"),
        )
        assert changed == 1
        assert await ledger.data_version() > before


async def test_rows_wait_in_the_spill_while_the_server_is_away(pg_url: str, tmp_path: Path) -> None:
    ledger = PostgresLedger(pg_url, fallback_path=tmp_path / "p.jsonl", retry_s=60)
    await ledger.open()
    good = ledger._pool
    try:
        ledger._pool = await asyncpg.create_pool(
            pg_url.rsplit("/", 1)[0].replace("postgres@", "nobody_here@") + "/x", min_size=0
        )
        await ledger.append(row(1))
        assert ledger.degraded and not ledger.health()["ok"]
        await ledger._pool.close()
        ledger._pool = good
        assert await ledger.flush()
        assert [r.request_id async for r in ledger.iter_rows()] == ["r1"]
    finally:
        await ledger.close()


class BrokenMidOperation:
    """A pool whose connection the server closed in the middle of an INSERT, as asyncpg
    reports it when ``pg_ctl stop -m fast`` lands during one (seen in the fleet test)."""

    async def execute(self, *args: object, **kwargs: object) -> str:
        raise asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )


async def test_a_connection_lost_mid_insert_holds_the_row_instead_of_dropping_it(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = PostgresLedger(pg_url, fallback_path=tmp_path / "p.jsonl", retry_s=60)
    await ledger.open()
    good = ledger._pool
    try:
        ledger._pool = BrokenMidOperation()
        await ledger.append(row(1))  # the response is already on its way: keep the row
        assert ledger.degraded and ledger.health()["buffered_rows"] == 1
        ledger._pool = good
        assert await ledger.flush()
        assert [r.request_id async for r in ledger.iter_rows()] == ["r1"]
    finally:
        await ledger.close()


def test_ledger_url_selects_postgres_and_the_environment_sets_it() -> None:
    from accounting.ledger.choose import ledger_from_settings
    from accounting.ledger.sqlite import SqliteLedger
    from config import LedgerSettings
    from config.loader import env_to_dotted

    assert env_to_dotted({"JOULEGATE_LEDGER_URL": "postgresql://h/db"}) == {
        "ledger.url": "postgresql://h/db"
    }
    pg = ledger_from_settings(LedgerSettings(url="postgresql://u:pw@h/db"))
    assert isinstance(pg, PostgresLedger) and "pw" not in pg.path
    assert isinstance(ledger_from_settings(LedgerSettings(path="/tmp/x.sqlite3")), SqliteLedger)


async def test_the_server_opens_its_accounting_on_postgres(pg_url: str, tmp_path: Path) -> None:
    from accounting.ledger.stage import Accounting
    from config import LedgerSettings, Settings

    settings = Settings(ledger=LedgerSettings(url=pg_url, fallback_path=str(tmp_path / "p.jsonl")))
    acc = await Accounting.open(settings, serving=True)
    try:
        assert isinstance(acc.ledger, PostgresLedger) and acc.ledger.health()["ok"]
    finally:
        await acc.ledger.close()


async def test_both_schemas_have_the_same_request_columns(pg_url: str, tmp_path: Path) -> None:
    """A column added to SQLite's migrations and not PostgreSQL's (or back) fails here."""
    async with PostgresLedger(pg_url, fallback_path=tmp_path / "p.jsonl") as ledger:
        rows = await ledger.fetchall(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'"
        )
    assert {r[0] for r in rows} - {"id"} == set(COLUMNS)


class ExplainingLedger(PostgresLedger):
    """Records the plan of every report query it runs (with sequential and bitmap
    scans off, so a tiny table is planned as a big one would be)."""

    plans: list[str]

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        if "GROUP BY k" in sql:
            async with self._need_pool().acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                await conn.execute("SET LOCAL enable_bitmapscan = off")
                plan = await conn.fetch("EXPLAIN " + translate(sql), *params)
            self.plans.append("\n".join(r[0] for r in plan))
        return await super().fetchall(sql, params)


async def test_a_ledger_from_schema_3_migrates_and_reports_from_the_index_alone(
    pg_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, statements in enumerate(PG_MIGRATIONS[:3], start=1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
        await conn.execute(
            'INSERT INTO requests (request_id, ts, "user", endpoint, energy_j)'
            " VALUES ('old', '2025-03-02T00:00:00.000000Z', 'alice', 'chat/completions', 5.0)"
        )
    finally:
        await conn.close()
    ledger = ExplainingLedger(pg_url, fallback_path=tmp_path / "p.jsonl")
    ledger.plans = []
    async with ledger:
        await ledger.append_many([row(n) for n in range(1, 30)] + [row(30, "bob")])
        await ledger.write("VACUUM requests")  # what autovacuum does; index-only needs it
        reports = [
            await build_report(
                ledger, parse_query({"user": "alice", "month": "2025-03", "by": by, "unit": "J"})
            )
            for by in get_args(By)
        ]
        version = await ledger.fetchall("SELECT max(version) FROM schema_version")
    assert version[0][0] == PG_SCHEMA_VERSION == 8
    assert [r.totals.energy for r in reports] == [5.0 + sum(range(1, 30))] * len(reports)
    assert len(ledger.plans) == len(get_args(By))
    for by, plan in zip(get_args(By), ledger.plans, strict=True):
        assert "Index Only Scan using requests_user_ts" in plan, (by, plan)
