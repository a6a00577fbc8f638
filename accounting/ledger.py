"""The ledger: one SQLite file holding a row per request, API keys and budgets.

The file is in WAL mode with a versioned schema (``PRAGMA user_version``);
:data:`MIGRATIONS` are applied forward at start-up, each in its own
transaction, so a file written by any earlier joulegate opens.

Two connections, each on its own aiosqlite thread: a *writer* that commits
one row per request (autocommit, so the row is durable when ``append``
returns) and a *reader* for reports, so a long report never delays a
request's last byte behind it.

Durability: ``synchronous=NORMAL`` (the default) puts a committed row in the
WAL through the OS, which survives a crash or ``kill -9`` of joulegate but not
a power cut; ``synchronous=FULL`` fsyncs every commit and survives that too.

When the database cannot be written (locked by another process past
``busy_timeout_s``, read-only, disk full) rows are not lost: they go to a
bounded in-memory buffer *and* an append-only JSON-lines fallback file, a
background task retries them every ``retry_s`` (reopening the connection, so a
file made writable again is noticed), and :meth:`Ledger.health` reports the
condition for ``/readyz``. Inserts are ``INSERT OR IGNORE`` on the request id,
so replaying the fallback file twice (after a crash mid-replay) adds nothing.

Degraded mode ends as soon as one batch of held rows commits: from then on new
rows go straight to the database again, and the few spilled meanwhile are
written right after, so steady traffic cannot keep the ledger degraded.

A held row that the fallback file could not take either (disk full) lives only
in memory and is lost if the process dies: those are counted
(``memory_only_rows``), refiled while the file refuses them, and
:attr:`Ledger.accepting_rows` turns false so that the server can refuse new
requests (``ledger.require_durable``). A row is dropped when both the buffer is
full and the file cannot be written; that is logged as an error and counted in
``health()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import platformdirs

from config.errors import LedgerError
from config.settings import LedgerSettings

log = logging.getLogger("joulegate.ledger")


class _NoStatementLines(logging.Filter):
    """Drops aiosqlite's debug lines: each one shows a statement with its parameters,
    which are prompts and answers when ``record_content`` is on. Content must never
    reach a log, whatever ``log_level`` says (a filter, because a level can be reset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_NO_STATEMENT_LINES = _NoStatementLines()


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
    carbon_intensity_g_per_kwh: float | None = None
    carbon_source: str | None = None
    co2e_g: float | None = None
    sci_g: float | None = None
    sci_operational_g: float | None = None
    sci_embodied_g: float | None = None
    sci_g_per_token: float | None = None
    trace_id: str | None = None
    response_id: str | None = None
    """The backend's own id of its answer (``chatcmpl-…``, ``resp_…``), if it sent one."""
    failure: str | None = None
    finish_reason: str | None = None
    request_params: dict[str, Any] = msgspec.field(default_factory=dict)
    """Numeric and boolean request parameters (``max_tokens``, ``temperature``, …)
    and ``messages_count``: prompt metadata without its content."""
    prompt: str | None = None
    """Prompt content as JSON; only with ``record_content = true``."""
    response: str | None = None
    """Response text; only with ``record_content = true``."""
    id: int | None = None
    """Row id, assigned by the database (None before it is written)."""


COLUMNS: tuple[str, ...] = tuple(f for f in LedgerRow.__struct_fields__ if f != "id")
_JSON_COLUMNS = frozenset({"energy_components_j", "request_params"})
_BOOL_COLUMNS = frozenset({"stream", "energy_estimated"})
_INSERT = (
    f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) "  # noqa: S608 - fixed column names
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)

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
    # 5: the backend's response id, so a client whose SDK drops the ``energy`` field
    # can look its request up by the id it does keep (GET /v1/energy/requests/{id}).
    (
        "ALTER TABLE requests ADD COLUMN response_id TEXT",
        "CREATE INDEX requests_response_id ON requests (response_id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def iso(t: dt.datetime) -> str:
    """A UTC timestamp as the ledger stores it (fixed width, so text order is time order)."""
    # isoformat, not strftime: glibc's %Y gives year 5 as "5", not "0005".
    return t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def default_path() -> Path:
    """``joulegate/ledger.sqlite3`` in the user's data folder."""
    return platformdirs.user_data_path("joulegate") / "ledger.sqlite3"


def row_params(row: LedgerRow) -> tuple[Any, ...]:
    """The INSERT parameters of a row, in :data:`COLUMNS` order."""
    out: list[Any] = []
    for name in COLUMNS:
        value = getattr(row, name)
        if name in _JSON_COLUMNS:
            value = json.dumps(value, separators=(",", ":")) if value else None
        out.append(value)
    return tuple(out)


def row_from_sql(values: sqlite3.Row) -> LedgerRow:
    """A row read back with ``SELECT *``."""
    data = dict(zip(values.keys(), values, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = json.loads(data[name]) if data[name] else {}
    for name in _BOOL_COLUMNS:
        data[name] = bool(data[name])
    return LedgerRow(**data)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class _Held:
    """A row waiting for the database, and whether the fallback file has it too."""

    row: LedgerRow
    filed: bool = False


class Ledger:
    """The ledger file: append rows, read them back, and survive an unwritable database."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "normal",
        busy_timeout_s: float = 1.0,
        buffer_rows: int = 10_000,
        fallback_path: Path | None = None,
        retry_s: float = 2.0,
    ) -> None:
        self.path = path
        self.fallback_path = fallback_path or path.with_name(path.name + ".pending.jsonl")
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._buffer_rows = buffer_rows
        self._retry_s = retry_s
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._spill_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._pending: deque[_Held] = deque()
        self._degraded: str | None = None
        """Why rows are being buffered (None while the database takes them)."""
        self._file_error: str | None = None
        """Why the fallback file refused its last row (None once it takes one again)."""
        self._filed_rows = 0
        self._memory_only_rows = 0
        """Held rows that are not in the fallback file either: lost if the process dies."""
        self._dropped_rows = 0
        self._retry_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, s: LedgerSettings) -> Ledger:
        """A ledger configured by ``[ledger]``."""
        path = Path(s.path).expanduser() if s.path else default_path()
        return cls(
            path,
            synchronous=s.synchronous,
            busy_timeout_s=s.busy_timeout_s,
            buffer_rows=s.buffer_rows,
            fallback_path=Path(s.fallback_path).expanduser() if s.fallback_path else None,
            retry_s=s.retry_s,
        )

    # -- life cycle ---------------------------------------------------------------

    async def open(self, *, serving: bool = False, must_exist: bool = False) -> None:
        """Open (creating and migrating as needed).

        ``serving``: replay a fallback file left by an earlier run and retry
        buffered rows in the background (only the server does this: the CLI
        must not race it for the fallback file). ``must_exist``: refuse to
        create a new file (for read-only commands).
        """
        if must_exist and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path} (nothing has been recorded yet)")
        logging.getLogger("aiosqlite").addFilter(_NO_STATEMENT_LINES)  # no-op if already there
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._migrate(self._writer)
            self._reader = await self._connect_reader()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        if serving:
            if self.fallback_path.exists():
                self._degraded = "rows left in the fallback file by an earlier run"
                await self.flush()
            self._retry_task = asyncio.create_task(self._retry_loop(), name="ledger-retry")

    async def close(self) -> None:
        """Retry buffered rows once more, then close both connections."""
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
            self._retry_task = None
        if self._degraded is not None and self._writer is not None and not await self.flush():
            log.error(
                "ledger: closing with %d held rows unwritten; those in %s are replayed at the"
                " next start, the %d held only in memory are lost",
                len(self._pending), self.fallback_path, self._memory_only_rows,
            )  # fmt: skip
        for conn in (self._writer, self._reader):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()
        self._writer = self._reader = None

    async def __aenter__(self) -> Ledger:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect_reader(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path)
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {max(self._busy_ms, 5000)}")
        return db

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            await db.close()
            raise
        return db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        version = await _user_version(db)
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.path} has schema version {version}, newer than this "
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
            log.info("ledger %s migrated from schema %d to %d", self.path, version, SCHEMA_VERSION)

    # -- writing ------------------------------------------------------------------

    async def append(self, row: LedgerRow) -> None:
        """Commit one row; while the database cannot take it, buffer and file it instead.

        Never raises for a database problem: the request it records has been served.
        """
        while True:
            writer = self._writer
            if self._degraded is None and writer is not None:
                try:
                    async with self._write_lock:
                        await writer.execute_insert(_INSERT, row_params(row))
                    return
                except sqlite3.Error as exc:
                    self._degrade(exc)
            if await self._spill(row):
                return

    @property
    def _takes_rows(self) -> bool:
        return self._degraded is None and self._writer is not None

    def _degrade(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.error(
                "ledger: cannot write %s (%s); holding rows in memory and in %s, retry every %gs",
                self.path, _describe(exc), self.fallback_path, self._retry_s,
            )  # fmt: skip
        self._degraded = _describe(exc)

    async def _spill(self, row: LedgerRow) -> bool:
        """Hold and file ``row``; False when the database took rows again meanwhile."""
        async with self._spill_lock:
            if self._takes_rows:  # a flush ended degraded mode while we waited
                return False
            held = _Held(row)
            kept = len(self._pending) < self._buffer_rows
            if kept:
                self._pending.append(held)
            try:
                await asyncio.to_thread(_append, self.fallback_path, _line(row))
            except OSError as exc:
                self._file_error = _describe(exc)
                if kept:
                    self._memory_only_rows += 1
                    log.error(
                        "ledger: cannot append to %s: %s; %d rows are held only in memory"
                        " (lost if joulegate stops before the database takes them)",
                        self.fallback_path, exc, self._memory_only_rows,
                    )  # fmt: skip
                else:
                    self._dropped_rows += 1
                    log.error(
                        "ledger: row %s for %s DROPPED: buffer full (%d rows) and %s: %s",
                        row.request_id, row.user, self._buffer_rows, self.fallback_path, exc,
                    )  # fmt: skip
                return True
            held.filed = True
            self._filed_rows += 1
            self._file_error = None
            return True

    async def _refile(self) -> None:
        """Offer the fallback file the rows held only in memory again (the disk may have room).

        With none, a blank line (skipped on replay) probes whether the file takes rows.
        """
        async with self._spill_lock:
            waiting = [h for h in self._pending if not h.filed]
            data = b"".join(_line(h.row) for h in waiting) or b"\n"
            try:
                await asyncio.to_thread(_append, self.fallback_path, data)
            except OSError as exc:
                self._file_error = _describe(exc)
                return
            for h in waiting:
                h.filed = True
            self._memory_only_rows -= len(waiting)
            self._filed_rows += len(waiting)
            self._file_error = None
        if waiting:
            log.warning(
                "ledger: %s writable again; filed the %d rows held only in memory",
                self.fallback_path, len(waiting),
            )  # fmt: skip

    async def flush(self) -> bool:
        """Write buffered and filed rows to the database; True once it takes rows again.

        As soon as one batch commits, degraded mode ends (new rows go straight to the
        database) and the rows spilled while that batch was written are written next;
        waiting instead for a moment with nothing held would never come under load.
        """
        async with self._flush_lock:
            try:
                await self._reopen_writer()
                written = await self._write_held()
                async with self._spill_lock:
                    self._degraded = None
                written += await self._write_held()
            except sqlite3.Error as exc:
                self._degrade(exc)
                return False
            async with self._spill_lock:
                if self._takes_rows:
                    log.warning("ledger: %s writable again; wrote %d held rows", self.path, written)
                    self._filed_rows = 0
                    self._file_error = None
            return self._degraded is None

    async def _write_held(self) -> int:
        """Insert what is held now (memory and file), then forget it; how many rows."""
        async with self._spill_lock:
            in_memory = [h.row for h in self._pending]
            filed_bytes = _size(self.fallback_path)
        filed = await asyncio.to_thread(_read_lines, self.fallback_path, filed_bytes)
        rows = list({r.request_id: r for r in [*filed, *in_memory]}.values())
        await self._insert_many(rows)
        async with self._spill_lock:
            for _ in in_memory:
                if not self._pending.popleft().filed:
                    self._memory_only_rows -= 1
            try:
                await asyncio.to_thread(_drop_head, self.fallback_path, filed_bytes)
            except OSError as exc:  # rows are in the database; a replay would add nothing
                log.warning("ledger: cannot trim %s: %s", self.fallback_path, exc)
        return len(rows)

    async def _reopen_writer(self) -> None:
        """A fresh writer, so that a file made writable again is opened for writing."""
        async with self._write_lock:
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await self._writer.close()
            self._writer = await self._connect()

    async def _insert_many(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                await self._writer.executemany(_INSERT, [row_params(r) for r in rows])
                await self._writer.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.execute("ROLLBACK")
                raise

    async def append_many(self, rows: Iterable[LedgerRow]) -> None:
        """Commit many rows in one transaction (imports, benchmarks); raises LedgerError."""
        try:
            await self._insert_many(list(rows))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write to the ledger {self.path}: {exc}") from exc

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            if self._degraded is None:
                continue
            try:
                if not await self.flush() and self._file_error is not None:
                    await self._refile()
            except Exception:
                log.exception("ledger: retrying held rows failed")

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (keys, budgets); the number of rows it changed."""
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        try:
            async with self._write_lock:
                cursor = await self._writer.execute(sql, params)
                count = cursor.rowcount
                await cursor.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write to the ledger {self.path}: {exc}") from exc
        return count

    # -- reading ------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one query on the reader connection."""
        if self._reader is None:
            raise LedgerError("the ledger is not open")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc

    async def iter_rows(
        self, where: str = "1", params: Sequence[Any] = (), *, batch: int = 1000
    ) -> AsyncIterator[LedgerRow]:
        """Every row matching ``where``, oldest first, read in batches."""
        if self._reader is None:
            raise LedgerError("the ledger is not open")
        try:
            sql = f"SELECT * FROM requests WHERE {where} ORDER BY ts, id"  # noqa: S608
            async with self._reader.execute(sql, params) as cursor:
                while chunk := await cursor.fetchmany(batch):
                    for values in chunk:
                        yield row_from_sql(values)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc

    async def data_version(self) -> int:
        """Changes whenever another connection (the CLI, our writer) commits."""
        rows = await self.fetchall("PRAGMA data_version")
        return int(rows[0][0])

    # -- health -------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Whether rows are being held back from the database."""
        return self._degraded is not None

    @property
    def accepting_rows(self) -> bool:
        """Whether a new row would be kept durably: by the database or the fallback file."""
        return self._degraded is None or self._file_error is None

    def health(self) -> dict[str, Any]:
        """The ledger's ``/readyz`` check: not ok while rows are held back."""
        out: dict[str, Any] = {
            "name": "ledger",
            "ok": self._degraded is None,
            "path": str(self.path),
        }
        if self._degraded is not None:
            out.update(
                error=self._degraded,
                buffered_rows=len(self._pending),
                memory_only_rows=self._memory_only_rows,
                fallback_file=str(self.fallback_path),
                fallback_rows=self._filed_rows,
            )
            if self._file_error is not None:
                out["fallback_error"] = self._file_error
        if self._dropped_rows:
            out["dropped_rows"] = self._dropped_rows
        return out


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _line(row: LedgerRow) -> bytes:
    return msgspec.json.encode(row) + b"\n"


def _append(path: Path, data: bytes) -> None:
    """Append whole lines, or nothing: a short write (disk full) is cut off again, so
    that no torn line glues itself to the next row."""
    with path.open("ab", buffering=0) as f:
        start = f.seek(0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                written = f.write(view)
                if not written:
                    raise OSError(errno.ENOSPC, "short write", str(path))
                view = view[written:]
        except OSError:
            with contextlib.suppress(OSError):
                f.truncate(start)
            raise


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # absent, or its folder is not one: nothing was filed there
        return 0


def _read_lines(path: Path, size: int) -> list[LedgerRow]:
    if size == 0:
        return []
    with path.open("rb") as f:
        data = f.read(size)
    rows: list[LedgerRow] = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(msgspec.json.decode(line, type=LedgerRow))
        except msgspec.DecodeError as exc:  # a line torn by a crash mid-write
            log.error("ledger: %s line %d is not a row (%s); skipped", path, number, exc)
    return rows


def _drop_head(path: Path, size: int) -> None:
    """Remove the first ``size`` bytes (rows now in the database), keeping later ones;
    the file itself once nothing is left (an empty one too, e.g. created by a write
    that then failed)."""
    total = _size(path)
    if total <= size:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        return
    if size == 0:
        return
    with path.open("rb") as f:
        f.seek(size)
        rest = f.read()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(rest)
    os.replace(tmp, path)
