"""The ledger: one SQLite file holding a row per request, API keys and budgets.

The file is in WAL mode with a versioned schema, migrated forward at start-up
(the row, the columns and the migrations are in :mod:`accounting.ledger.rows`).

Two connections, each on its own thread: a *writer* that commits one row per
request (autocommit, so the row is durable when ``append`` returns), handed each
row without a wait (:mod:`accounting.ledger.sqlite_thread`) so the commit overlaps the
answer's last bytes, and an aiosqlite *reader* for reports, so a long report never
delays a request's last byte behind it. A serving ledger checkpoints the WAL into the
file every second on the reader's thread, so no commit does it (SQLite's default
checkpoint in the commit of every ~200th row held that request's last byte a few ms).

Durability: ``synchronous=NORMAL`` (the default) puts a committed row in the
WAL through the OS, which survives a crash or ``kill -9`` of joulegate but not
a power cut; ``synchronous=FULL`` fsyncs every commit and survives that too.

When the database cannot be written (locked by another process past
``busy_timeout_s``, read-only, disk full) rows are not lost: they go to a
bounded in-memory buffer *and* an append-only JSON-lines fallback file (a
:class:`~accounting.spill.Spill`), a background task retries them every
``retry_s`` (reopening the connection, so a file made writable again is
noticed), and :meth:`SqliteLedger.health` reports the
condition for ``/readyz`` (that life cycle is :mod:`accounting.ledger.spilling`'s,
shared with the PostgreSQL ledger). Inserts are ``INSERT OR IGNORE`` on the request id,
so replaying the fallback file twice (after a crash mid-replay) adds nothing.

Degraded mode ends as soon as one batch of held rows commits: from then on new
rows go straight to the database again, and the few spilled meanwhile are
written right after, so steady traffic cannot keep the ledger degraded.

A held row that the fallback file could not take either (disk full) lives only
in memory and is lost if the process dies: those are counted
(``memory_only_rows``), refiled while the file refuses them, and
:attr:`SqliteLedger.accepting_rows` turns false so that the server can refuse new
requests (``ledger.require_durable``). A row is dropped when both the buffer is
full and the file cannot be written; that is logged as an error and counted in
``health()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import platformdirs

from accounting.ledger.rows import (
    INSERT_ROW,
    Convert,
    LedgerRow,
    T,
    migrate,
    row_from_sql,
    row_params,
)
from accounting.ledger.spill import Spill
from accounting.ledger.spilling import SpillingLedger
from accounting.ledger.sqlite_thread import SqliteThread
from config import LedgerSettings
from config.errors import LedgerError

log = logging.getLogger("joulegate.ledger")


class _NoStatementLines(logging.Filter):
    """Drops aiosqlite's debug lines: each one shows a statement with its parameters,
    which are prompts and answers when ``record_content`` is on. Content must never
    reach a log, whatever ``log_level`` says (a filter, because a level can be reset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_NO_STATEMENT_LINES = _NoStatementLines()


def default_path() -> Path:
    """``joulegate/ledger.sqlite3`` in the user's data folder."""
    return platformdirs.user_data_path("joulegate") / "ledger.sqlite3"


CHECKPOINT_S = 1.0
"""How often a serving ledger checkpoints its WAL in the background."""
BACKSTOP_PAGES = 10_000
"""WAL pages (4 KiB) after which a commit checkpoints after all, should the background
checkpoint fall behind; SQLite's default of 1,000 made every ~200th commit do it
(a few ms, the last byte of its answer waiting)."""


class SqliteLedger(SpillingLedger):
    """The ledger file: append rows, read them back, and survive an unwritable database."""

    _db_errors = (sqlite3.Error,)
    # A Python int beyond 64 bits (OverflowError), text that is not UTF-8 (ValueError),
    # a value of no SQLite type (InterfaceError), a constraint: the row, not the file.
    _content_errors = (OverflowError, ValueError, TypeError, sqlite3.IntegrityError,
                       sqlite3.DataError, sqlite3.InterfaceError)  # fmt: skip
    _kind = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "normal",
        busy_timeout_s: float = 1.0,
        buffer_rows: int = 10_000,
        fallback_path: Path | None = None,
        retry_s: float = 2.0,
        checkpoint_s: float = CHECKPOINT_S,
    ) -> None:
        super().__init__(
            Spill(
                fallback_path or path.with_name(path.name + ".pending.jsonl"),
                buffer_rows=buffer_rows,
            ),
            retry_s=retry_s,
        )
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._writer: SqliteThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._checkpoint_s = checkpoint_s
        self._serving = False
        self._checkpoints: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, s: LedgerSettings) -> SqliteLedger:
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

    @property
    def _where(self) -> str:
        return str(self.path)

    @property
    def _connected(self) -> bool:
        return self._writer is not None

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
        self._serving = serving
        logging.getLogger("aiosqlite").addFilter(_NO_STATEMENT_LINES)  # no-op if already there
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            migrating = await self._connect()
            try:
                await migrate(migrating, self.path)
            finally:
                await migrating.close()
            self._writer = await self._open_writer()
            self._reader = await self._connect_reader()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        if serving:
            await self._start_serving()
            self._checkpoints = asyncio.create_task(
                self._checkpoint_loop(), name="ledger-checkpoint"
            )

    async def close(self) -> None:
        """Retry buffered rows once more, then close both connections."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        await self._stop_serving()
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._reader.close()
        self._writer = self._reader = None

    async def __aenter__(self) -> SqliteLedger:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect_reader(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path)
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {max(self._busy_ms, 5000)}")
        return db

    def _writer_pragmas(self) -> list[str]:
        """How the writer's connection is set up when it opens (and reopens)."""
        pragmas = [
            f"PRAGMA busy_timeout = {self._busy_ms}",
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {self._synchronous}",
        ]
        if self._serving:  # the checkpoint loop moves the WAL into the file
            pragmas.append(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        return pragmas

    async def writer_setting(self, pragma: str) -> Any:
        """A setting of the writer's connection (``PRAGMA name``), for checks."""
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        row = await self._writer.call(lambda db: db.execute(f"PRAGMA {pragma}").fetchone())
        return None if row is None else row[0]

    async def _checkpoint_loop(self) -> None:
        """Every ``checkpoint_s``, copy the WAL's committed pages into the database file
        on the reader's thread; a commit never has to (PASSIVE: no writer waits)."""
        while True:
            await asyncio.sleep(self._checkpoint_s)
            reader = self._reader
            if reader is None:
                continue
            try:
                await reader.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the next one tries again; commits go on
                log.warning("ledger: checkpoint of %s failed: %s", self.path, exc)

    async def _open_writer(self) -> SqliteThread:
        writer = SqliteThread(self.path, self._writer_pragmas())
        await writer.open()
        return writer

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

    # -- writing ------------------------------------------------------------------

    def _start_insert(self, row: LedgerRow) -> asyncio.Future[int] | None:
        writer = self._writer
        if writer is None or self._write_lock.locked():  # being reopened: the slow way
            return None
        params = row_params(row)
        return writer.submit(
            lambda db: _execute(db, INSERT_ROW, params),
            orphaned=lambda exc: self._orphaned(row, exc),
        )

    async def _insert(self, row: LedgerRow) -> None:
        writer = self._writer
        if writer is None:  # closed meanwhile: the row is held, replayed at the next start
            raise sqlite3.OperationalError("the ledger is closed")
        params = row_params(row)
        async with self._write_lock:
            await writer.call(lambda db: _execute(db, INSERT_ROW, params))

    async def _reconnect(self) -> None:
        """A fresh writer, so that a file made writable again is opened for writing."""
        async with self._write_lock:
            if self._writer is not None:
                await self._writer.close()
                self._writer = None
            self._writer = await self._open_writer()

    async def _insert_many(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        params = [row_params(r) for r in rows]
        async with self._write_lock:
            await self._writer.call(lambda db: _insert_batch(db, params))

    async def append_many(self, rows: Iterable[LedgerRow]) -> None:
        """Commit many rows in one transaction (imports, benchmarks); raises LedgerError."""
        try:
            await self._insert_many(list(rows))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write to the ledger {self.path}: {exc}") from exc

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (keys, budgets); the number of rows it changed."""
        if self._writer is None:
            raise LedgerError("the ledger is not open")
        try:
            async with self._write_lock:
                count = await self._writer.call(lambda db: _execute(db, sql, params))
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

    async def fetch_converted(self, sql: str, params: Sequence[Any], convert: Convert[T]) -> T:
        """A big query's rows (tuples) to ``convert``, in a worker thread on its own connection."""
        if self._reader is None:
            raise LedgerError("the ledger is not open")

        def read() -> T:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                db.execute(f"PRAGMA busy_timeout = {max(self._busy_ms, 5000)}")
                rows = db.execute(sql, params).fetchall()
            return convert(rows)

        try:
            return await asyncio.to_thread(read)
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


def _execute(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement (autocommit: committed when it returns); the rows it changed."""
    return db.execute(sql, params).rowcount


def _insert_batch(db: sqlite3.Connection, params: Sequence[Sequence[Any]]) -> None:
    """Many rows in one transaction, all or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(INSERT_ROW, params)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
