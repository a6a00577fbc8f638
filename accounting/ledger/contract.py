"""What every ledger does, whatever database holds it: the contract callers type against.

:class:`~accounting.ledger.sqlite.SqliteLedger` (a file, the default) and
:class:`~accounting.ledger.postgres.PostgresLedger` (several hosts, one ledger) both
keep it; both build on :class:`~accounting.ledger.spilling.SpillingLedger`, which holds
rows in a fallback file while the database cannot take them. SQL is written in SQLite's
dialect; the PostgreSQL ledger translates it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from accounting.ledger.rows import Convert, LedgerRow

T = TypeVar("T")


class Ledger(Protocol):
    """A per-request ledger: append rows durably, read them back, report its health."""

    async def open(self, *, serving: bool = False, must_exist: bool = False) -> None:
        """Connect and migrate; ``serving`` starts the background work a server needs."""
        ...

    async def close(self) -> None:
        """Write what is held back if possible, stop background work, disconnect."""
        ...

    async def __aenter__(self) -> Self:
        """Open for a command-line read or write."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Close."""
        ...

    async def append(self, row: LedgerRow) -> None:
        """Commit one row (or hold it in the fallback file while the database cannot)."""
        ...

    def append_soon(self, row: LedgerRow) -> Awaitable[None]:
        """Start committing ``row`` now; the awaitable is done once it is durable."""
        ...

    async def append_many(self, rows: Iterable[LedgerRow]) -> None:
        """Commit many rows in one transaction (imports, benchmarks)."""
        ...

    async def flush(self) -> bool:
        """Write the rows held back; True when none is left."""
        ...

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one writing statement (keys, budgets); the number of rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a query; each is indexable by position and by column name."""
        ...

    async def fetch_converted(self, sql: str, params: Sequence[Any], convert: Convert[T]) -> T:
        """A query's rows handed to ``convert`` off the event loop (large reads)."""
        ...

    def iter_rows(
        self, where: str = "1", params: Sequence[Any] = (), *, batch: int = 1000
    ) -> AsyncIterator[LedgerRow]:
        """Every row matching ``where``, oldest first, read in batches."""
        ...

    async def data_version(self) -> int:
        """Changes whenever another connection commits."""
        ...

    @property
    def path(self) -> Path | str:
        """Where the ledger is, for messages (a file, or a URL without its password)."""
        ...

    @property
    def fallback_path(self) -> Path:
        """The JSON-lines file that takes rows while the database cannot."""
        ...

    @property
    def degraded(self) -> bool:
        """Whether rows are being held back from the database."""
        ...

    @property
    def accepting_rows(self) -> bool:
        """Whether a new row would be kept durably."""
        ...

    def health(self) -> dict[str, Any]:
        """The ledger's ``/readyz`` check."""
        ...
