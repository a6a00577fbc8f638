"""One SQLite connection on a thread of its own, handed work without a wait.

aiosqlite hands a call to its thread from inside a coroutine, so a commit started in
``on_finished`` reaches the thread only when the event loop next runs that coroutine:
after the answer's rendering, just when the last byte starts waiting for it. Here
:meth:`SqliteThread.submit` puts the call on the thread's queue at once, so the insert
(~60 us of SQLite work, which releases the GIL) runs while the loop renders and
sends the rest of the answer. Calls run one at a time, in the order submitted; each is
one whole unit of work (a statement, or a transaction from ``BEGIN`` to ``COMMIT``),
so calls from different callers never share a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Orphaned = Callable[[BaseException], None]
"""Told a call's error when nobody awaits its future any more (it was cancelled)."""
_Call = tuple[asyncio.Future[Any], Callable[[sqlite3.Connection], Any], Orphaned | None]


class SqliteThread:
    """A ``sqlite3`` connection (autocommit) owned by one thread."""

    def __init__(self, path: Path, pragmas: Sequence[str] = ()) -> None:
        self.path = path
        self._pragmas = tuple(pragmas)
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def open(self) -> None:
        """Start the thread and connect; raises ``sqlite3.Error`` (the thread then ends)."""
        self._thread = threading.Thread(target=self._run, name="joulegate-ledger", daemon=True)
        self._thread.start()
        try:
            await self.call(self._configure)
        except BaseException:
            await self.close()
            raise

    def _configure(self, db: sqlite3.Connection) -> None:
        for pragma in self._pragmas:
            db.execute(pragma)

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], *, orphaned: Orphaned | None = None
    ) -> asyncio.Future[T]:
        """Run ``fn(connection)`` on the thread, starting now; its result, or its error.

        Cancelling the future does not stop the call; if it then fails, ``orphaned`` is
        told the error (in the event loop), as nobody is left to hear it otherwise."""
        if self._closed or self._thread is None:
            raise sqlite3.OperationalError("the ledger's writer is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, fn, orphaned))
        return future

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`submit`, awaited."""
        return await self.submit(fn)

    async def close(self) -> None:
        """Let the calls already submitted finish, then close the connection."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._calls.put(None)
            await asyncio.to_thread(thread.join)

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        error: sqlite3.Error | None = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            error = exc
        try:
            while (item := self._calls.get()) is not None:
                future, fn, orphaned = item
                if db is None:
                    _answer(future, None, error, orphaned)
                    continue
                try:
                    result: Any = fn(db)
                except BaseException as exc:  # handed to the caller, whatever it is
                    _answer(future, None, exc, orphaned)
                else:
                    _answer(future, result, None, None)
        finally:
            if db is not None:
                db.close()


def _answer(
    future: asyncio.Future[Any], result: Any, error: BaseException | None,
    orphaned: Orphaned | None,
) -> None:  # fmt: skip
    """Settle ``future`` from the thread (its loop may have closed meanwhile)."""
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_settle, future, result, error, orphaned)


def _settle(
    future: asyncio.Future[Any], result: Any, error: BaseException | None,
    orphaned: Orphaned | None = None,
) -> None:  # fmt: skip
    if future.done():  # its caller was cancelled: the work was done all the same
        if error is not None and orphaned is not None:
            orphaned(error)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
