"""Whole UTC days before today, added up once: what keeps Usage fast on a big ledger
(Compare reads the per-day sums the database keeps, :mod:`accounting.ledger.daysums`).

A report over a period is the sum of its days. A day that is over does not change
(its rows are in), so its sums are kept in memory the first time a page needs them,
per user (or everyone) and day; a page then adds up the kept days and asks the ledger
only for what it has not kept: today's part, and days never asked for yet. Nothing is
kept on the proxy's path: the sums are made when a page asks, from the same grouped
queries (per day) as the reports.

A row can still land in a day that is over (a request that arrived just before
midnight and finished after it; rows replayed from the fallback file; another host on
a shared ledger). Before each use, the rows added since the last look (row ids above
the last seen, an indexed range) are checked: a day any of them belongs to is dropped
and summed again when next asked for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from accounting.ledger import Ledger

T = TypeVar("T")
DAY = dt.timedelta(days=1)
MAX_DAYS = 200_000
"""Kept (user, day) entries at most; beyond, the cache starts again (a year of 500
users' days fits)."""


def day_start(t: dt.datetime) -> dt.datetime:
    """Midnight UTC of ``t``'s day."""
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)


def whole_days(
    since: dt.datetime | None, until: dt.datetime | None, now: dt.datetime, first: str | None
) -> tuple[list[str], dt.datetime] | None:
    """The closed days (``YYYY-MM-DD``) of a period that starts at a midnight, and where
    today's open part begins; None when the period does not start or end at a midnight
    (it is then summed whole from the ledger). ``first`` is the oldest row's timestamp,
    for a period without a start."""
    start = since if since is not None else (_parse_day(first) if first else day_start(now))
    today = day_start(now)
    if start != day_start(start) or (until is not None and until != day_start(until)):
        return None
    end = min(until, today) if until is not None else today
    days = []
    d = start
    while d < end:
        days.append(d.date().isoformat())
        d += DAY
    return days, max(start, today)


def _parse_day(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts[:10]).replace(tzinfo=dt.UTC)


@dataclass
class DayCache(Generic[T]):
    """Per (whose, day): a value computed once from the ledger (see the module doc)."""

    days: dict[tuple[str | None, str], T] = field(default_factory=dict)
    seen_id: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _forget_late_days(self, ledger: Ledger) -> None:
        if self.seen_id is None:
            rows = await ledger.fetchall("SELECT MAX(id) FROM requests")
            self.seen_id = int(rows[0][0] or 0)
            return
        rows = await ledger.fetchall(
            "SELECT MIN(ts), MAX(id) FROM requests WHERE id > ?", [self.seen_id]
        )
        if rows and rows[0][1] is not None:
            self.seen_id = int(rows[0][1])
            oldest = str(rows[0][0])[:10]
            for key in [k for k in self.days if k[1] >= oldest]:
                del self.days[key]

    async def get(
        self,
        ledger: Ledger,
        whose: str | None,
        days: list[str],
        compute: Callable[[str, str], Awaitable[dict[str, T]]],
        empty: Callable[[], T],
    ) -> list[T]:
        """The value of each of ``days`` for ``whose``; ``compute(first, last)`` sums
        the days from ``first`` to ``last`` (inclusive) not kept yet, one value a day
        (days without rows may be left out)."""
        async with self.lock:
            await self._forget_late_days(ledger)
            missing = [d for d in days if (whose, d) not in self.days]
            if missing:
                if len(self.days) + len(missing) > MAX_DAYS:
                    self.days.clear()
                found = await compute(missing[0], missing[-1])
                for d in missing:
                    self.days[(whose, d)] = found.get(d) or empty()
            return [self.days[(whose, d)] for d in days]
