"""Energy reports over the ledger: filters, grouping, units and rendering.

One :class:`ReportQuery` serves the CLI (``joulegate report``) and HTTP
(``GET /v1/energy/report``): the same names, parsed by :func:`parse_query`,
which raises :class:`~config.errors.BadRequest` naming the bad parameter.
Sums are taken in SQL in joules and converted once at the edge, so a total
in any unit is the sum of the rows' ``energy_j`` divided by the unit.

Periods are UTC. ``since`` is inclusive; ``until`` is exclusive for a full
timestamp and includes the whole day for a bare date; ``month`` is
``YYYY-MM``. A row belongs to the period holding its arrival time (``ts``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from accounting.ledger import Ledger
from accounting.ledger.rows import iso
from config.errors import BadRequest
from config.table import render_table
from config.units import J_PER

By = Literal["user", "model", "day", "endpoint", "backend", "task", "host", "machine"]
Unit = Literal["J", "Wh", "kWh"]
Format = Literal["table", "csv", "json"]
_GROUP_SQL: dict[str, str] = {
    "user": "user",
    "model": "COALESCE(model_served, model_requested, '(none)')",
    "day": "substr(ts, 1, 10)",
    "endpoint": "endpoint",
    "backend": "COALESCE(backend, '(none)')",
    "task": "COALESCE(task, '(none)')",
    "host": "COALESCE(host, '(none)')",
    "machine": "COALESCE(machine, '(none)')",
}
FORECAST_BY = frozenset({"model", "task"})
"""Groupings whose report says how far off the energy forecasts were (MAPE)."""
_FORECAST_APE_SQL = (
    "TOTAL(CASE WHEN forecast_energy_j IS NOT NULL AND energy_j > 0 AND failure IS NULL"
    " THEN ABS(forecast_energy_j - energy_j) / energy_j END),"
    " COUNT(CASE WHEN forecast_energy_j IS NOT NULL AND energy_j > 0 AND failure IS NULL"
    " THEN 1 END)"
)


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What to add up: whose rows, which period, grouped how, in which unit."""

    user: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    by: By = "user"
    unit: Unit = "Wh"

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition and parameters for these filters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.user is not None:
            clauses.append("user = ?")
            params.append(self.user)
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(iso(self.since))
        if self.until is not None:
            clauses.append("ts < ?")
            params.append(iso(self.until))
        return (" AND ".join(clauses) or "1"), params


def parse_when(text: str, name: str, *, end: bool = False) -> dt.datetime:
    """``YYYY-MM-DD`` or an ISO timestamp (UTC unless it says otherwise).

    With ``end`` a bare date means the end of that day.
    """
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            when = start + dt.timedelta(days=1) if end else start
        else:
            when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO timestamp", param=name
        ) from None
    except OverflowError:  # the day after 9999-12-31
        raise _out_of_range(name, text) from None
    try:
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except OverflowError:  # an offset that takes it past year 1 or 9999 in UTC
        raise _out_of_range(name, text) from None


def parse_month(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``YYYY-MM`` → start and end of that UTC month."""
    try:
        year, month = (int(p) for p in text.split("-"))
        start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    except ValueError:
        raise BadRequest(f"month: {text!r} is not YYYY-MM", param="month") from None
    try:
        end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
    except ValueError:  # December 9999 ends in a year datetime cannot hold
        raise _out_of_range("month", text) from None
    return start, end


def _out_of_range(name: str, text: str) -> BadRequest:
    return BadRequest(
        f"{name}: {text!r} is out of range: a period must begin and end within the years"
        " 1 to 9999 (UTC)",
        param=name,
    )


def _choice(value: str | None, name: str, allowed: Any, default: str) -> Any:
    options = get_args(allowed)
    if value is None or value == "":
        return default
    match = {o.lower(): o for o in options}.get(value.lower())
    if match is None:
        raise BadRequest(f"{name}: {value!r} is not one of {', '.join(options)}", param=name)
    return match


def parse_query(params: Mapping[str, str | None]) -> ReportQuery:
    """A :class:`ReportQuery` from string parameters (CLI flags or a query string)."""
    since = until = None
    if params.get("month"):
        if params.get("since") or params.get("until"):
            raise BadRequest("give either month or since/until, not both", param="month")
        since, until = parse_month(str(params["month"]))
    if params.get("since"):
        since = parse_when(str(params["since"]), "since")
    if params.get("until"):
        until = parse_when(str(params["until"]), "until", end=True)
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be after since", param="until")
    return ReportQuery(
        user=params.get("user") or None,
        since=since,
        until=until,
        by=_choice(params.get("by"), "by", By, "user"),
        unit=_choice(params.get("unit"), "unit", Unit, "Wh"),
    )


@dataclass(slots=True)
class Line:
    """One group of the report (or the totals), energy in the report's unit."""

    key: str
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float = 0.0
    energy: float = 0.0
    energy_dynamic: float = 0.0
    co2e_g: float = 0.0
    forecast_ape: float = 0.0
    """Sum of the forecasts' absolute percentage errors (as fractions) over ``forecast_rows``."""
    forecast_rows: int = 0
    """Completed rows that had both a forecast and a measured energy."""

    @property
    def forecast_mape_pct(self) -> float | None:
        """Mean absolute percentage error of the forecasts at admission (None: no forecasts)."""
        return 100.0 * self.forecast_ape / self.forecast_rows if self.forecast_rows else None


@dataclass(slots=True)
class Report:
    """A computed report: its query, one line per group, and the totals."""

    query: ReportQuery
    lines: list[Line]
    totals: Line

    def to_json(self) -> dict[str, Any]:
        """The JSON the HTTP endpoint and ``--format json`` give."""
        q = self.query
        return {
            "object": "energy.report",
            "by": q.by,
            "unit": q.unit,
            "user": q.user,
            "since": iso(q.since) if q.since else None,
            "until": iso(q.until) if q.until else None,
            "groups": [self._line_json(line) for line in self.lines],
            "totals": self._line_json(self.totals),
        }

    @property
    def _forecasts(self) -> bool:
        return self.query.by in FORECAST_BY

    def _line_json(self, line: Line) -> dict[str, Any]:
        unit = self.query.unit.lower()
        out: dict[str, Any] = {
            self.query.by: line.key,
            "requests": line.requests,
            "failed": line.failed,
            "prompt_tokens": line.prompt_tokens,
            "completion_tokens": line.completion_tokens,
            "duration_s": line.duration_s,
            f"energy_{unit}": line.energy,
            f"energy_dynamic_{unit}": line.energy_dynamic,
            "co2e_g": line.co2e_g,
        }
        if self._forecasts:
            out["forecast_mape_pct"] = line.forecast_mape_pct
            out["forecast_rows"] = line.forecast_rows
        return out

    def columns(self) -> list[str]:
        """Column names of the table and CSV forms."""
        u = self.query.unit
        head = [self.query.by, "requests", "failed", "prompt_tokens", "completion_tokens",
                "duration_s", f"energy_{u}", f"energy_dynamic_{u}", "co2e_g"]  # fmt: skip
        return [*head, "forecast_mape_pct"] if self._forecasts else head

    def _cells(self, line: Line, fmt: str) -> list[str]:
        cells = [line.key, str(line.requests), str(line.failed), str(line.prompt_tokens),
                str(line.completion_tokens), format(line.duration_s, fmt),
                format(line.energy, fmt), format(line.energy_dynamic, fmt),
                format(line.co2e_g, fmt)]  # fmt: skip
        if self._forecasts:
            mape = line.forecast_mape_pct
            cells.append("" if mape is None else format(mape, ".1f" if fmt else ""))
        return cells

    def to_csv(self, *, totals: bool = False) -> str:
        """CSV with a header and one row per group (full precision): data rows only, as
        CSV readers expect, unless ``totals`` adds a final ``TOTAL`` row."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(self.columns())
        for line in [*self.lines, self.totals] if totals else self.lines:
            w.writerow(self._cells(line, ""))
        return out.getvalue()

    def to_table(self) -> str:
        """A readable, aligned table with the period and a totals line."""
        q = self.query
        period = (f"{iso(q.since)[:19] if q.since else 'the beginning'} to "
                  f"{iso(q.until)[:19] if q.until else 'now'} UTC")  # fmt: skip
        title = f"Energy by {q.by}, {period}" + (f", user {q.user}" if q.user else "")
        rows = [self._cells(line, ".4f") for line in self.lines]
        total = self._cells(self.totals, ".4f")
        total[0] = "TOTAL"
        table = render_table(self.columns(), rows, footer=total, rules=True, empty="(no requests)")
        return f"{title}\n\n{table}"

    def render(self, form: Format, *, totals: bool = False) -> str:
        """The report as ``table``, ``csv`` or ``json`` text (``totals``: CSV's TOTAL row)."""
        if form == "json":
            return json.dumps(self.to_json(), indent=2) + "\n"
        return self.to_csv(totals=totals) if form == "csv" else self.to_table()


async def build_report(ledger: Ledger, query: ReportQuery) -> Report:
    """Add up the ledger's rows for ``query``."""
    where, params = query.where()
    group = _GROUP_SQL[query.by]
    rows = await ledger.fetchall(
        f"SELECT {group} AS k, COUNT(*), COUNT(failure), TOTAL(prompt_tokens),"  # noqa: S608
        " TOTAL(completion_tokens), TOTAL(duration_s), TOTAL(energy_j),"
        f" TOTAL(energy_dynamic_j), TOTAL(co2e_g), {_FORECAST_APE_SQL} FROM requests WHERE {where}"
        " GROUP BY k ORDER BY k",
        params,
    )
    per = J_PER[query.unit]
    lines = [
        Line(str(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], r[6] / per, r[7] / per, *r[8:])
        for r in rows
    ]
    totals = Line("TOTAL")
    for line in lines:
        for f in fields(Line)[1:]:
            setattr(totals, f.name, getattr(totals, f.name) + getattr(line, f.name))
    return Report(query, lines, totals)
