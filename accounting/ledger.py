"""The ledger: one SQLite file holding a row per request, API keys and budgets.

The file is in WAL mode with a versioned schema, migrated forward at start-up
(the row, the columns and the migrations are in :mod:`accounting.schema`).

Two connections, each on its own aiosqlite thread: a *writer* that commits
one row per request (autocommit, so the row is durable when ``append``
returns) and a *reader* for reports, so a long report never delays a
request's last byte behind it.

Durability: ``synchronous=NORMAL`` (the default) puts a committed row in the
WAL through the OS, which survives a crash or ``kill -9`` of joulegate but not
a power cut; ``synchronous=FULL`` fsyncs every commit and survives that too.

When the database cannot be written (locked by another process past
``busy_timeout_s``, read-only, disk full) rows are not lost: they go to a
bounded in-memory buffer *and* an append-only JSON-lines fallback file (a
:class:`~accounting.spill.Spill`), a background task retries them every
``retry_s`` (reopening the connection, so a file made writable again is
noticed), and :meth:`Ledger.health` reports the
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
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import platformdirs

from accounting.schema import INSERT_ROW, Convert, LedgerRow, T, migrate, row_from_sql, row_params
from accounting.spill import Spill, describe
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
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._retry_s = retry_s
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._spill_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._spill = Spill(
            fallback_path or path.with_name(path.name + ".pending.jsonl"),
            buffer_rows=buffer_rows,
        )
        """Rows held back from the database; used under ``_spill_lock`` only."""
        self._degraded: str | None = None
        """Why rows are being buffered (None while the database takes them)."""
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

    @property
    def fallback_path(self) -> Path:
        """The JSON-lines file that takes rows while the database cannot."""
        return self._spill.path

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
            await migrate(self._writer, self.path)
            self._reader = await self._connect_reader()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        if serving:
            if self._spill.has_file():
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
                self._spill.held_rows, self.fallback_path, self._spill.memory_only_rows,
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
                        await writer.execute_insert(INSERT_ROW, row_params(row))
                    return
                except sqlite3.Error as exc:
                    self._degrade(exc)
            if await self._hold(row):
                return

    @property
    def _takes_rows(self) -> bool:
        return self._degraded is None and self._writer is not None

    def _degrade(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.error(
                "ledger: cannot write %s (%s); holding rows in memory and in %s, retry every %gs",
                self.path, describe(exc), self.fallback_path, self._retry_s,
            )  # fmt: skip
        self._degraded = describe(exc)

    async def _hold(self, row: LedgerRow) -> bool:
        """Hold and file ``row``; False when the database took rows again meanwhile."""
        async with self._spill_lock:
            if self._takes_rows:  # a flush ended degraded mode while we waited
                return False
            await self._spill.hold(row)
            return True

    async def _refile(self) -> None:
        async with self._spill_lock:
            await self._spill.refile()

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
                    self._spill.recovered()
            return self._degraded is None

    async def _write_held(self) -> int:
        """Insert what is held now (memory and file), then forget it; how many rows."""
        async with self._spill_lock:
            in_memory, filed_bytes = self._spill.snapshot()
        filed = await self._spill.read_filed(filed_bytes)
        rows = list({r.request_id: r for r in [*filed, *in_memory]}.values())
        await self._insert_many(rows)
        async with self._spill_lock:
            await self._spill.forget(len(in_memory), filed_bytes)
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
                await self._writer.executemany(INSERT_ROW, [row_params(r) for r in rows])
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
                if not await self.flush() and self._spill.file_error is not None:
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

    # -- health -------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Whether rows are being held back from the database."""
        return self._degraded is not None

    @property
    def accepting_rows(self) -> bool:
        """Whether a new row would be kept durably: by the database or the fallback file."""
        return self._degraded is None or self._spill.file_error is None

    def health(self) -> dict[str, Any]:
        """The ledger's ``/readyz`` check: not ok while rows are held back."""
        out: dict[str, Any] = {
            "name": "ledger",
            "ok": self._degraded is None,
            "path": str(self.path),
            "database": f"sqlite {self.path}",
        }
        if self._degraded is not None:
            out["error"] = self._degraded
            out.update(self._spill.health())
        if self._spill.dropped_rows:
            out["dropped_rows"] = self._spill.dropped_rows
        return out
