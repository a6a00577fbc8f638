"""The ledger's row and its schema: the ``requests`` columns, the migrations that
build the file, and how a row goes into and comes out of SQLite.

The file has a versioned schema (``PRAGMA user_version``): :data:`MIGRATIONS`
are applied forward at start-up by :func:`migrate`, each in its own
transaction, so a file written by any earlier joulegate opens. A migration is
only ever appended, never edited: files in the field have run the old ones.

Timestamps are stored as fixed-width UTC text (:func:`iso`), so text order is
time order and a date range is an index range scan.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import operator
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from accounting.ledger.daysums import SQLITE_MIGRATION
from config.errors import LedgerError

log = logging.getLogger("joulegate.ledger")

T = TypeVar("T")
Convert = Callable[[list[Any]], T]
"""What a ledger's ``fetch_converted`` hands a query's rows to, in its worker thread."""


class LedgerRow(msgspec.Struct, kw_only=True):
    """One request as recorded; the field names are the table's columns."""

    request_id: str
    ts: str
    """Arrival time, UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (sorts as text)."""
    finished_ts: str | None = None
    user: str = "anonymous"
    key_prefix: str | None = None
    endpoint: str = ""
    model_requested: str | None = None
    model_served: str | None = None
    status: int | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_s: float | None = None
    thermal_wait_s: float | None = None
    duration_s: float | None = None
    energy_j: float | None = None
    energy_dynamic_j: float | None = None
    energy_components_j: dict[str, float | None] = msgspec.field(default_factory=dict)
    meter: str | None = None
    energy_estimated: bool = False
    energy_low_j: float | None = None
    energy_high_j: float | None = None
    estimate_model: str | None = None
    backend: str | None = None
    """The backend that served the request (its name, or ``host:port``)."""
    task: str | None = None
    """What the request was for (``x-joulegate-task`` or ``metadata.task``)."""
    host: str | None = None
    """The joulegate host that recorded the row (``node_name``, else the hostname)."""
    machine: str | None = None
    """The measurement machine that served the request (``local`` without
    ``[[machines]]``); its meters measured ``energy_j``."""
    carbon_intensity_g_per_kwh: float | None = None
    carbon_source: str | None = None
    co2e_g: float | None = None
    sci_g: float | None = None
    sci_operational_g: float | None = None
    sci_embodied_g: float | None = None
    sci_g_per_token: float | None = None
    embodied_model: str | None = None
    """How the hardware's embodied emissions (SCI's ``M``) were chosen."""
    trace_id: str | None = None
    response_id: str | None = None
    """The backend's own id of its answer (``chatcmpl-…``, ``resp_…``), if it sent one."""
    failure: str | None = None
    forecast_energy_j: float | None = None
    """What :mod:`accounting.forecast.fit` expected the request to cost, at admission."""
    finish_reason: str | None = None
    request_params: dict[str, Any] = msgspec.field(default_factory=dict)
    """Numeric and boolean request parameters (``max_tokens``, ``temperature``, …)
    and ``messages_count``: prompt metadata without its content."""
    prompt: str | None = None
    """Prompt content as JSON; only with ``record_content = true``."""
    response: str | None = None
    """Response text; only with ``record_content = true``."""
    attribution: str | None = None
    """``exclusive``, ``token_share`` or ``time_share`` (see :mod:`meters.attribution`)."""
    concurrency_mean: float | None = None
    """Requests in flight on average over this one's window."""
    id: int | None = None
    """Row id, assigned by the database (None before it is written)."""


COLUMNS: tuple[str, ...] = tuple(f for f in LedgerRow.__struct_fields__ if f != "id")
_JSON_COLUMNS = frozenset({"energy_components_j", "request_params"})
_BOOL_COLUMNS = frozenset({"stream", "energy_estimated"})
INSERT_ROW = (
    f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) "  # noqa: S608 - fixed column names
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)
"""One row's INSERT; ``OR IGNORE`` on the request id, so a replayed row adds nothing."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the request ledger.
    (
        """CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            ts TEXT NOT NULL,
            finished_ts TEXT,
            user TEXT NOT NULL,
            key_prefix TEXT,
            endpoint TEXT NOT NULL,
            model_requested TEXT,
            model_served TEXT,
            status INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            queue_s REAL,
            thermal_wait_s REAL,
            duration_s REAL,
            energy_j REAL,
            energy_dynamic_j REAL,
            energy_components_j TEXT,
            meter TEXT,
            energy_estimated INTEGER NOT NULL DEFAULT 0,
            carbon_intensity_g_per_kwh REAL,
            carbon_source TEXT,
            co2e_g REAL,
            sci_g REAL,
            sci_operational_g REAL,
            sci_embodied_g REAL,
            sci_g_per_token REAL,
            trace_id TEXT,
            failure TEXT,
            finish_reason TEXT,
            request_params TEXT,
            prompt TEXT,
            response TEXT
        )""",
        # Covers every column a report reads, so a user's monthly report is one range
        # scan of this index, never a look-up into the table per row.
        """CREATE INDEX requests_user_ts ON requests (
            user, ts, model_served, model_requested, endpoint, failure, prompt_tokens,
            completion_tokens, duration_s, energy_j, energy_dynamic_j, co2e_g
        )""",
        "CREATE INDEX requests_ts ON requests (ts)",
    ),
    # 2: API keys and budgets.
    (
        """CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            prefix TEXT NOT NULL UNIQUE,
            user TEXT NOT NULL,
            salt BLOB NOT NULL,
            digest BLOB NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            created_ts TEXT NOT NULL,
            revoked_ts TEXT
        )""",
        """CREATE TABLE budgets (
            user TEXT PRIMARY KEY,
            period TEXT NOT NULL CHECK (period IN ('day', 'month')),
            energy_j REAL,
            co2e_g REAL,
            updated_ts TEXT NOT NULL
        )""",
    ),
    # 3: an estimate's low/high range and the model that made it.
    (
        "ALTER TABLE requests ADD COLUMN energy_low_j REAL",
        "ALTER TABLE requests ADD COLUMN energy_high_j REAL",
        "ALTER TABLE requests ADD COLUMN estimate_model TEXT",
    ),
    # 4: which backend served each request (several backends behind one joulegate).
    ("ALTER TABLE requests ADD COLUMN backend TEXT",),
    # 5: the task a request was tagged with; the report index covers it too.
    (
        "ALTER TABLE requests ADD COLUMN task TEXT",
        "DROP INDEX requests_user_ts",
        """CREATE INDEX requests_user_ts ON requests (
            user, ts, model_served, model_requested, endpoint, failure, prompt_tokens,
            completion_tokens, duration_s, energy_j, energy_dynamic_j, co2e_g, task
        )""",
    ),
    # 6: the backend's response id, so a client whose SDK drops the ``energy`` field
    # can look its request up by the id it does keep (GET /v1/energy/requests/{id}).
    (
        "ALTER TABLE requests ADD COLUMN response_id TEXT",
        "CREATE INDEX requests_response_id ON requests (response_id)",
    ),
    # 7: the energy forecast at admission, so a report can say how far off it was; the
    # report index covers it too.
    (
        "ALTER TABLE requests ADD COLUMN forecast_energy_j REAL",
        "DROP INDEX requests_user_ts",
        """CREATE INDEX requests_user_ts ON requests (
            user, ts, model_served, model_requested, endpoint, failure, prompt_tokens,
            completion_tokens, duration_s, energy_j, energy_dynamic_j, co2e_g, task,
            forecast_energy_j
        )""",
    ),
    # 8: how a request's energy was attributed when requests overlapped (issue 14).
    (
        "ALTER TABLE requests ADD COLUMN attribution TEXT",
        "ALTER TABLE requests ADD COLUMN concurrency_mean REAL",
    ),
    # 9: which joulegate host recorded each row (several joulegates, one ledger).
    ("ALTER TABLE requests ADD COLUMN host TEXT",),
    # 10: how the embodied emissions behind sci_embodied_g were chosen (issue 30).
    ("ALTER TABLE requests ADD COLUMN embodied_model TEXT",),
    # 11: which measurement machine served each request (``[[machines]]``).
    ("ALTER TABLE requests ADD COLUMN machine TEXT",),
    # 12: per user, day, model, task and kind, the sums the console's Compare and
    # Usage read, kept by triggers and filled from the rows there (see daysums).
    SQLITE_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)


def iso(t: dt.datetime) -> str:
    """A UTC timestamp as the ledger stores it (fixed width, so text order is time order)."""
    # isoformat, not strftime: glibc's %Y gives year 5 as "5", not "0005".
    return t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


_encode_json = msgspec.json.Encoder().encode
"""Compact JSON for the JSON columns (several times faster than ``json.dumps``)."""


_column_values = operator.attrgetter(*COLUMNS)
_JSON_AT = tuple(i for i, name in enumerate(COLUMNS) if name in _JSON_COLUMNS)


def row_params(row: LedgerRow) -> tuple[Any, ...]:
    """The INSERT parameters of a row, in :data:`COLUMNS` order."""
    # One attrgetter call reads every column (a getattr per column cost ~3x as much).
    out: list[Any] = list(_column_values(row))
    for i in _JSON_AT:
        out[i] = _encode_json(out[i]).decode() if out[i] else None
    return tuple(out)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""What an INTEGER column holds in SQLite, and a BIGINT in PostgreSQL."""


def _clean_text(value: str) -> str:
    """Text every database stores: no NUL (PostgreSQL refuses it), valid UTF-8."""
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _clean(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        try:
            _encode_json(value).decode().encode("utf-8")
        except (TypeError, ValueError, OverflowError):
            return {}  # whatever the JSON holds is not worth the row
        return value
    return None


def repaired(row: LedgerRow) -> LedgerRow:
    """``row`` with every field a database could refuse for its content cleared: whole
    numbers beyond 64 bits, non-finite floats, NUL characters and broken UTF-8 in text,
    JSON that does not encode. A row the database refuses is written like this instead
    of being dropped (or left to block the rows behind it)."""
    return msgspec.structs.replace(row, **{name: _clean(getattr(row, name)) for name in COLUMNS})


def bare(row: LedgerRow) -> LedgerRow:
    """The least of ``row`` that a ledger keeps (who, when, what, status, energy and
    CO2e): the last resort for a row refused even :func:`repaired`."""
    fixed = repaired(row)
    return LedgerRow(
        request_id=fixed.request_id, ts=fixed.ts, finished_ts=fixed.finished_ts,
        user=fixed.user, key_prefix=fixed.key_prefix, endpoint=fixed.endpoint,
        status=fixed.status, stream=fixed.stream, duration_s=fixed.duration_s,
        energy_j=fixed.energy_j, co2e_g=fixed.co2e_g, host=fixed.host,
        failure=fixed.failure,
    )  # fmt: skip


def row_from_sql(values: sqlite3.Row) -> LedgerRow:
    """A row read back with ``SELECT *``."""
    data = dict(zip(values.keys(), values, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = json.loads(data[name]) if data[name] else {}
    for name in _BOOL_COLUMNS:
        data[name] = bool(data[name])
    return LedgerRow(**data)


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Bring the file behind ``db`` (at ``path``, for messages) up to :data:`SCHEMA_VERSION`.

    Raises LedgerError for a file written by a newer joulegate.
    """
    version = await _user_version(db)
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger {path} has schema version {version}, newer than this "
            f"joulegate's {SCHEMA_VERSION}; upgrade joulegate"
        )
    if version == SCHEMA_VERSION:
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        version = await _user_version(db)
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number + 1}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    if version < SCHEMA_VERSION:
        log.info("ledger %s migrated from schema %d to %d", path, version, SCHEMA_VERSION)


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
