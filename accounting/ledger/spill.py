"""Where ledger rows wait while the database cannot take them.

A :class:`Spill` is a bounded in-memory buffer *and* an append-only JSON-lines
fallback file. A row held here is in memory (until the buffer is full) and in
the file (unless the disk refuses it). Rows that are in memory only are lost if
the process dies: they are counted, and offered to the file again by
:meth:`Spill.refile`. A row that neither takes is dropped, logged as an error
and counted.

The file survives the process: the next start replays it (``INSERT OR
IGNORE`` on the request id, so a replay interrupted by a crash and done again
adds nothing). Lines are appended whole or not at all, so a short write cannot
glue a torn line to the next row.

A spill is not safe for concurrent use on its own: the ledger calls it under
one lock, the same that guards its degraded flag, so that no row is held after
the database took rows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from accounting.ledger.rows import LedgerRow

log = logging.getLogger("joulegate.ledger")


def describe(exc: BaseException) -> str:
    """An error as ``/readyz`` shows it: its type and message."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class _Held:
    """A row waiting for the database, and whether the fallback file has it too."""

    row: LedgerRow
    filed: bool = False


class Spill:
    """The memory buffer and fallback file of a ledger in degraded mode."""

    def __init__(self, path: Path, *, buffer_rows: int) -> None:
        self.path = path
        """The JSON-lines fallback file."""
        self._buffer_rows = buffer_rows
        self._pending: deque[_Held] = deque()
        self.file_error: str | None = None
        """Why the fallback file refused its last row (None once it takes one again)."""
        self._filed_rows = 0
        self._memory_only_rows = 0
        """Held rows that are not in the fallback file either: lost if the process dies."""
        self._dropped_rows = 0

    @property
    def held_rows(self) -> int:
        """Rows in the memory buffer."""
        return len(self._pending)

    @property
    def memory_only_rows(self) -> int:
        """Held rows that the fallback file does not have: lost if the process dies."""
        return self._memory_only_rows

    @property
    def dropped_rows(self) -> int:
        """Rows lost because the buffer was full and the file refused them."""
        return self._dropped_rows

    def count_dropped(self) -> None:
        """Count a row lost for another reason (the database refused even its bare
        fields), so that ``health()`` shows it beside those the spill dropped."""
        self._dropped_rows += 1

    def has_file(self) -> bool:
        """Whether a fallback file is there (perhaps left by an earlier run)."""
        return self.path.exists()

    async def hold(self, row: LedgerRow) -> None:
        """Keep ``row`` in memory (if the buffer has room) and append it to the file."""
        held = _Held(row)
        kept = len(self._pending) < self._buffer_rows
        if kept:
            self._pending.append(held)
        try:
            await asyncio.to_thread(_append, self.path, _line(row))
        except OSError as exc:
            self.file_error = describe(exc)
            if kept:
                self._memory_only_rows += 1
                log.error(
                    "ledger: cannot append to %s: %s; %d rows are held only in memory"
                    " (lost if joulegate stops before the database takes them)",
                    self.path, exc, self._memory_only_rows,
                )  # fmt: skip
            else:
                self._dropped_rows += 1
                log.error(
                    "ledger: row %s for %s DROPPED: buffer full (%d rows) and %s: %s",
                    row.request_id, row.user, self._buffer_rows, self.path, exc,
                )  # fmt: skip
            return
        held.filed = True
        self._filed_rows += 1
        self.file_error = None

    async def refile(self) -> None:
        """Offer the file the rows held only in memory again (the disk may have room).

        With none, a blank line (skipped on replay) probes whether the file takes rows.
        """
        waiting = [h for h in self._pending if not h.filed]
        data = b"".join(_line(h.row) for h in waiting) or b"\n"
        try:
            await asyncio.to_thread(_append, self.path, data)
        except OSError as exc:
            self.file_error = describe(exc)
            return
        for h in waiting:
            h.filed = True
        self._memory_only_rows -= len(waiting)
        self._filed_rows += len(waiting)
        self.file_error = None
        if waiting:
            log.warning(
                "ledger: %s writable again; filed the %d rows held only in memory",
                self.path, len(waiting),
            )  # fmt: skip

    def snapshot(self) -> tuple[list[LedgerRow], int]:
        """What is held now: the rows in memory and how many bytes of the file are filed."""
        return [h.row for h in self._pending], _size(self.path)

    async def read_filed(self, size: int) -> list[LedgerRow]:
        """The rows in the first ``size`` bytes of the file (a torn line is skipped)."""
        return await asyncio.to_thread(_read_lines, self.path, size)

    async def forget(self, in_memory: int, filed_bytes: int) -> None:
        """Let go of a :meth:`snapshot` now in the database: the first ``in_memory``
        buffered rows and the first ``filed_bytes`` of the file."""
        for _ in range(in_memory):
            if not self._pending.popleft().filed:
                self._memory_only_rows -= 1
        try:
            await asyncio.to_thread(_drop_head, self.path, filed_bytes)
        except OSError as exc:  # rows are in the database; a replay would add nothing
            log.warning("ledger: cannot trim %s: %s", self.path, exc)

    def recovered(self) -> None:
        """The database takes rows again: the file's past refusals no longer count."""
        self._filed_rows = 0
        self.file_error = None

    def health(self) -> dict[str, Any]:
        """What a degraded ledger's ``/readyz`` check shows of its held rows."""
        out: dict[str, Any] = {
            "buffered_rows": len(self._pending),
            "memory_only_rows": self._memory_only_rows,
            "fallback_file": str(self.path),
            "fallback_rows": self._filed_rows,
        }
        if self.file_error is not None:
            out["fallback_error"] = self.file_error
        return out


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
