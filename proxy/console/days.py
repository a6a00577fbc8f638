"""A period as the database's per-day sums see it: whole UTC days, read from
``request_day_sums`` (:mod:`accounting.ledger.daysums`), and the part of a day at
either end of a period that does not start or end at a midnight, summed from
``requests`` (an indexed range of less than a day).

Compare and Usage both read a period this way, so their first view costs a few
summary rows a day instead of a scan of the period's requests, and is always
current: the triggers that keep the sums run on every write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from accounting.reports import ReportQuery

DAY = dt.timedelta(days=1)


def day_start(t: dt.datetime) -> dt.datetime:
    """Midnight UTC of ``t``'s day."""
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)


def _midnight_from(t: dt.datetime) -> dt.datetime:
    """The first UTC midnight at or after ``t``."""
    start = day_start(t)
    return start if start == t else start + DAY


@dataclass(frozen=True, slots=True)
class Split:
    """A period in three parts, in time order; each may be empty (None)."""

    before: ReportQuery | None
    """The part of a day before the first whole day (from ``requests``)."""
    days: tuple[str, list[Any]] | None
    """The whole days: a ``WHERE`` on the day sums' ``user`` and ``day``, and its
    parameters."""
    after: ReportQuery | None
    """The part of a day after the last whole day (from ``requests``)."""


def split(query: ReportQuery) -> Split:
    """``query``'s period as whole UTC days and the parts of a day at its ends; a
    period holding no whole day is all ``before``."""
    since, until = query.since, query.until
    first = None if since is None else _midnight_from(since)
    end = None if until is None else day_start(until)
    if first is not None and end is not None and first >= end:
        return Split(query, None, None)
    clauses, params = [], []
    for clause, value in (
        ("user = ?", query.user),
        ("day >= ?", first and first.date().isoformat()),
        ("day < ?", end and end.date().isoformat()),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return Split(
        before=None if since == first else dataclasses.replace(query, until=first),
        days=(" AND ".join(clauses) or "1", params),
        after=None if until == end else dataclasses.replace(query, since=end),
    )
