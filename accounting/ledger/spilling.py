"""What both ledgers share: degraded mode, the life cycle of their :class:`Spill`.

:class:`SpillingLedger` is the base of :class:`accounting.ledger.SqliteLedger` (SQLite)
and :class:`accounting.ledger_pg.PostgresLedger`. It owns what happens when the
database cannot take a row: the row is held (memory buffer and fallback file), a
background task retries every ``retry_s``, degraded mode ends as soon as one
batch of held rows commits, and ``health()`` reports the condition for
``/readyz``. A subclass says only how to reach its database: insert one row,
insert many in one transaction, reconnect before a retry, and which exceptions
are its database's. Ending degraded mode at the first committed batch (not at a
moment with nothing held) is what keeps steady traffic from holding it there.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from accounting.ledger.rows import LedgerRow, bare, repaired
from accounting.ledger.spill import Spill, describe

log = logging.getLogger("joulegate.ledger")


class SpillingLedger(abc.ABC):
    """A ledger that holds rows back while its database cannot take them."""

    _db_errors: ClassVar[tuple[type[BaseException], ...]]
    """What a database failure raises (the row is then held, not lost)."""
    _content_errors: ClassVar[tuple[type[BaseException], ...]]
    """What a row the database refuses for its content raises (a number it cannot
    hold, text it cannot store): the row is written repaired (:func:`repaired`), not
    held, since retrying it as it is would fail forever and block the rows behind it."""
    _kind: ClassVar[str]
    """The database's name in ``/readyz`` (``sqlite``, ``postgresql``)."""

    def __init__(self, spill: Spill, *, retry_s: float) -> None:
        self._spill = spill
        """Rows held back from the database; used under ``_spill_lock`` only."""
        self._retry_s = retry_s
        self._spill_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._degraded: str | None = None
        """Why rows are being held (None while the database takes them)."""
        self._retry_task: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()
        """Rows being held after their request stopped waiting (kept from the GC)."""

    # -- what a subclass provides ---------------------------------------------------

    @property
    @abc.abstractmethod
    def _where(self) -> str:
        """The database, for messages (no password)."""

    @property
    @abc.abstractmethod
    def _connected(self) -> bool:
        """Whether the ledger is open (a connection or pool to write with)."""

    @abc.abstractmethod
    async def _insert(self, row: LedgerRow) -> None:
        """Commit one row; raises one of ``_db_errors``."""

    @abc.abstractmethod
    async def _insert_many(self, rows: Sequence[LedgerRow]) -> None:
        """Commit rows in one transaction; raises one of ``_db_errors``."""

    def _start_insert(self, row: LedgerRow) -> Awaitable[object] | None:
        """Start committing one row now, if the database's driver can start without
        a wait (its result raises one of ``_db_errors``); None to take :meth:`append`."""
        return None

    @abc.abstractmethod
    async def _reconnect(self) -> None:
        """Before a retry: make the database be looked at afresh; raises ``_db_errors``."""

    # -- life cycle ---------------------------------------------------------------

    @property
    def fallback_path(self) -> Path:
        """The JSON-lines file that takes rows while the database cannot."""
        return self._spill.path

    async def _start_serving(self) -> None:
        """Replay a fallback file left by an earlier run; retry held rows from now on."""
        if self._spill.has_file():
            self._degraded = "rows left in the fallback file by an earlier run"
            await self.flush()
        self._retry_task = asyncio.create_task(self._retry_loop(), name="ledger-retry")

    async def _stop_serving(self) -> None:
        """Stop retrying, then try the held rows once more (before the database closes)."""
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
            self._retry_task = None
        # Held rows are written even when degraded mode has ended: cancelling the retry
        # task may have stopped a flush between its batches (rows spilled while the first
        # was written), which would leave them in the file until the next start.
        held = self._degraded is not None or any(self._spill.snapshot())
        if held and self._connected and not await self.flush():
            log.error(
                "ledger: closing with %d held rows unwritten; those in %s are replayed at the"
                " next start, the %d held only in memory are lost",
                self._spill.held_rows, self.fallback_path, self._spill.memory_only_rows,
            )  # fmt: skip

    # -- writing ------------------------------------------------------------------

    async def append(self, row: LedgerRow) -> None:
        """Commit one row; while the database cannot take it, buffer and file it instead.

        Never raises for a database problem: the request it records has been served.
        """
        while True:
            if self._takes_rows:
                try:
                    await self._insert_fixing(row)
                    return
                except self._db_errors as exc:
                    self._degrade(exc)
            if await self._hold(row):
                return

    async def _insert_fixing(self, row: LedgerRow) -> None:
        """Commit ``row``; one the database refuses for its content is committed
        :func:`repaired`, else :func:`bare`. Raises ``_db_errors`` (the database is down)."""
        try:
            await self._insert(row)
            return
        except self._content_errors as exc:
            refused: BaseException = exc
        for fixed in (repaired(row), bare(row)):
            try:
                await self._insert(fixed)
            except self._content_errors as exc:
                refused = exc
                continue
            log.warning(
                "ledger: %s refused the row of request %s (%s); recorded with the odd fields"
                " cleared", self._where, row.request_id, describe(refused),
            )  # fmt: skip
            return
        self._spill.count_dropped()
        log.error(
            "ledger: the row of request %s for %s DROPPED: %s refuses even its bare fields (%s)",
            row.request_id, row.user, self._where, describe(refused),
        )  # fmt: skip

    def append_soon(self, row: LedgerRow) -> Awaitable[None]:
        """:meth:`append`, begun before this returns: await the result for the row to be in.

        Where the driver starts a commit without a wait (the SQLite writer thread) the
        result is a coroutine that only waits for it, to be awaited in the caller's own
        task; cancelled, the commit goes on, and a failure then is held as :meth:`append`
        holds one (:meth:`_orphaned`). Elsewhere it is a task running :meth:`append`."""
        started = None
        if self._takes_rows:
            # append meets the error again (and repairs a row refused for its content)
            with contextlib.suppress(*self._db_errors, *self._content_errors):
                started = self._start_insert(row)
        if started is None:
            return asyncio.ensure_future(self.append(row))
        return self._append_started(row, started)

    async def _append_started(self, row: LedgerRow, started: Awaitable[object]) -> None:
        try:
            await started
        except self._content_errors:
            await self.append(row)  # repaired there
        except self._db_errors as exc:
            self._degrade(exc)
            await self.append(row)

    def _orphaned(self, row: LedgerRow, exc: BaseException) -> None:
        """A commit :meth:`append_soon` started failed after its waiter was cancelled:
        hold the row as :meth:`append` would, in a task of its own."""
        if isinstance(exc, self._content_errors):
            pass  # append repairs it
        elif isinstance(exc, self._db_errors):
            self._degrade(exc)
        else:
            log.error("ledger: recording request %s failed: %s", row.request_id, describe(exc))
            return
        task = asyncio.ensure_future(self.append(row))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    @property
    def _takes_rows(self) -> bool:
        return self._degraded is None and self._connected

    def _degrade(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.error(
                "ledger: cannot write %s (%s); holding rows in memory and in %s, retry every %gs",
                self._where, describe(exc), self.fallback_path, self._retry_s,
            )  # fmt: skip
        self._degraded = describe(exc)

    async def _hold(self, row: LedgerRow) -> bool:
        """Hold and file ``row``; False when the database took rows again meanwhile."""
        async with self._spill_lock:
            if self._takes_rows:  # a flush ended degraded mode while we waited
                return False
            await self._spill.hold(row)
            return True

    async def flush(self) -> bool:
        """Write buffered and filed rows to the database; True once it takes rows again.

        As soon as one batch commits, degraded mode ends (new rows go straight to the
        database) and the rows spilled while that batch was written are written next;
        waiting instead for a moment with nothing held would never come under load.
        """
        async with self._flush_lock:
            try:
                await self._reconnect()
                written = await self._write_held()
                async with self._spill_lock:
                    self._degraded = None
                written += await self._write_held()
            except self._db_errors as exc:
                self._degrade(exc)
                return False
            async with self._spill_lock:
                if self._takes_rows:
                    log.warning("ledger: %s takes rows again; wrote %d held rows",
                                self._where, written)  # fmt: skip
                    self._spill.recovered()
            return self._degraded is None

    async def _write_held(self) -> int:
        """Insert what is held now (memory and file), then forget it; how many rows."""
        async with self._spill_lock:
            in_memory, filed_bytes = self._spill.snapshot()
        filed = await self._spill.read_filed(filed_bytes)
        rows = list({r.request_id: r for r in [*filed, *in_memory]}.values())
        try:
            await self._insert_many(rows)
        except self._content_errors:
            # One row the database refuses must not keep the others out forever: one at
            # a time (a replayed row adds nothing), the refused ones repaired.
            for row in rows:
                await self._insert_fixing(row)
        async with self._spill_lock:
            await self._spill.forget(len(in_memory), filed_bytes)
        return len(rows)

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            if self._degraded is None:
                continue
            try:
                if not await self.flush() and self._spill.file_error is not None:
                    async with self._spill_lock:
                        await self._spill.refile()
            except Exception:
                log.exception("ledger: retrying held rows failed")

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
            "path": self._where,
            "database": f"{self._kind} {self._where}",
        }
        if self._degraded is not None:
            out["error"] = self._degraded
            out.update(self._spill.health())
        if self._spill.dropped_rows:
            out["dropped_rows"] = self._spill.dropped_rows
        return out
