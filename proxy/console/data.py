"""The JSON the Compare and Usage pages draw, read through the reports' queries.

Every figure comes from the same code as ``joulegate report`` and the energy routes
(:func:`accounting.reports.build_report`, the requests list's newest-first page), so
what a page shows equals what those give for the same filters. A non-admin sees
their own rows only: naming another user is 403, another user's request is 404,
exactly as for ``/v1/energy/*``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from accounting.ledger import Ledger
from accounting.ledger.daysums import READ_ALL_DAYS, READ_USER_DAYS
from accounting.ledger.routes import page_limit, query_integer, whose_rows
from accounting.ledger.rows import iso, row_from_sql, utcnow
from accounting.ledger.stage import Accounting
from accounting.reports import Line, Report, ReportQuery, build_report, parse_query
from config.errors import BadRequest, NotFound
from config.units import J_PER
from proxy.console.compare import build_compare
from proxy.console.days import split
from proxy.console.guard import Viewer, viewer
from proxy.context import AppContext

PAGE = 25
MAX_PAGE = 200


def _ledger(seen: Viewer) -> Accounting:
    if seen.acc is None:
        raise NotFound("the ledger is not enabled on this joulegate", code="not_found")
    return seen.acc


def _period(request: Request[Any, Any, Any], seen: Viewer, by: str) -> dict[str, str | None]:
    q = request.query_params
    return {
        "user": seen.whose(q.get("user")),
        "since": q.get("since"),
        "until": q.get("until"),
        "month": q.get("month"),
        "by": by,
        "unit": "Wh",
    }


async def day_report(ledger: Ledger, query: ReportQuery) -> Report:
    """``build_report(ledger, query)``; for ``by = day`` its whole UTC days come from
    the day sums the database keeps: the same lines and totals, in its order."""
    if query.by != "day":
        return await build_report(ledger, query)
    parts = split(query)
    lines: list[Line] = []
    if parts.before is not None:
        lines += (await build_report(ledger, dataclasses.replace(parts.before, unit="J"))).lines
    if parts.days is not None:
        where, params = parts.days
        read = READ_ALL_DAYS if query.user is None else READ_USER_DAYS
        for r in await ledger.fetchall(read.format(where=where), params):
            day, requests, failed, prompt, completion, *sums, forecast_rows = r
            duration, energy, dynamic, co2e, ape = (float(v) for v in sums)
            lines.append(Line(str(day), int(requests), int(failed), int(prompt),
                              int(completion), duration, energy, dynamic, co2e, ape,
                              int(forecast_rows)))  # fmt: skip
    if parts.after is not None:
        lines += (await build_report(ledger, dataclasses.replace(parts.after, unit="J"))).lines
    per = J_PER[query.unit]
    shown = [dataclasses.replace(x, energy=x.energy / per, energy_dynamic=x.energy_dynamic / per)
             for x in lines]  # fmt: skip
    totals = Line("TOTAL")
    for line in shown:
        for f in dataclasses.fields(Line)[1:]:
            setattr(totals, f.name, getattr(totals, f.name) + getattr(line, f.name))
    return Report(query, shown, totals)


@get("/api/compare", media_type=MediaType.JSON)
async def compare(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The model x task table for the period (the viewer's rows; an admin's: everyone's)."""
    seen = await viewer(request, ctx)
    acc = _ledger(seen)
    query = parse_query(_period(request, seen, "model"))
    body = await build_compare(acc.ledger, query)
    return seen.keep(Response(body))


@get("/api/usage", media_type=MediaType.JSON)
async def usage(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Energy and CO2e per day for the period, its totals and the user's budget."""
    seen = await viewer(request, ctx)
    acc = _ledger(seen)
    params = _period(request, seen, "day")
    report = await day_report(acc.ledger, parse_query(params))
    body = report.to_json()
    body["budget"] = budget_json(acc, params["user"])
    return seen.keep(Response(body))


def budget_json(acc: Accounting, user: str | None, now: dt.datetime | None = None) -> Any:
    """What is left of ``user``'s budget now, as ``GET /v1/energy/budget`` gives it
    (None: no budget, or everyone)."""
    if user is None:
        return None
    status = acc.budgets.status(user, now or utcnow())
    return None if status is None else status.to_json()


@get("/api/requests", media_type=MediaType.JSON)
async def requests_page(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The requests, newest first, a page at a time, filtered by ``model`` and ``task``;
    or those whose joulegate or backend id is ``q``.

    Pages follow arrival time (``ts``, then the row id): the user's ``(user, ts)`` index
    hands them over in order, so a page costs the same on a million rows as on ten.
    ``before`` is the ``next_before`` cursor of the previous page.
    """
    seen = await viewer(request, ctx)
    acc = _ledger(seen)
    q = request.query_params
    user = seen.whose(q.get("user"))
    limit = page_limit(q.get("limit"), PAGE, MAX_PAGE)
    where, params = whose_rows(user)
    for column, name in (("model_served", "model"), ("task", "task")):
        if q.get(name):
            where.append(f"{column} = ?")
            params.append(q[name])
    if q.get("q"):
        rows = await _search(acc, where, params, q["q"].strip(), limit + 1)
    else:
        if q.get("before"):
            ts, row_id = _cursor(q["before"])
            where.append("ts <= ? AND NOT (ts = ? AND id >= ?)")
            params += [ts, ts, row_id]
        rows = await acc.ledger.fetchall(
            f"SELECT * FROM requests WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY ts DESC, id DESC LIMIT ?",
            [*params, limit + 1],
        )
    data = [row_from_sql(r) for r in rows[:limit]]
    more = len(rows) > limit
    return seen.keep(
        Response(
            {
                "object": "list",
                "data": [msgspec.to_builtins(r) for r in data],
                "has_more": more,
                "next_before": f"{data[-1].ts}|{data[-1].id}" if more else None,
            }
        )
    )


async def _search(
    acc: Accounting, where: list[str], params: list[Any], wanted: str, limit: int
) -> list[Any]:
    """Rows whose joulegate id or backend id is ``wanted``: one indexed look-up each."""
    found: dict[int, Any] = {}
    for column in ("request_id", "response_id"):
        rows = await acc.ledger.fetchall(
            f"SELECT * FROM requests WHERE {column} = ? AND {' AND '.join(where)}"  # noqa: S608
            " ORDER BY id DESC LIMIT ?",
            [wanted, *params, limit],
        )
        found.update((r["id"], r) for r in rows)
    return [found[k] for k in sorted(found, reverse=True)][:limit]


def _cursor(text: str) -> tuple[str, int]:
    ts, _, row_id = text.rpartition("|")
    number = query_integer(row_id, "before")
    if not ts or number is None:
        raise BadRequest("before must be the next_before of a page", param="before")
    return ts, number


@get("/api/requests/{lookup_id:str}", media_type=MediaType.JSON)
async def one_request(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext], lookup_id: FromPath[str]
) -> Any:
    """One request's whole row, by joulegate's or the backend's id; another user's is
    404, like an unknown one."""
    seen = await viewer(request, ctx)
    acc = _ledger(seen)
    who = seen.require_user()
    mine, owner = ("", []) if who.is_admin else (" AND user = ?", [who.user])
    for column in ("request_id", "response_id"):
        rows = await acc.ledger.fetchall(
            f"SELECT * FROM requests WHERE {column} = ?{mine} ORDER BY id DESC LIMIT 1",  # noqa: S608
            [lookup_id, *owner],
        )
        if rows:
            return seen.keep(Response(msgspec.to_builtins(row_from_sql(rows[0]))))
    raise NotFound(f"no request with id {lookup_id!r}", code="not_found")


@get("/api/export.csv", media_type="text/csv")
async def export(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The period's billing report as CSV: per day, with a TOTAL row (``joulegate report
    --by day --format csv --totals`` for the same user and period)."""
    seen = await viewer(request, ctx)
    acc = _ledger(seen)
    params = _period(request, seen, request.query_params.get("by") or "day")
    report = await day_report(acc.ledger, parse_query(params))
    name = f"joulegate-{params['user'] or 'everyone'}-{iso(utcnow())[:10]}.csv"
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
    return seen.keep(
        Response(
            report.to_csv(totals=True),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{safe}"'},
        )
    )


@get("/api/users", media_type=MediaType.JSON)
async def users(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Users an admin may pick: those with keys or budgets, and ``anonymous``."""
    seen = await viewer(request, ctx)
    seen.require_admin()
    acc = _ledger(seen)
    names = {k.user for k in acc.keys.all()} | set(acc.budgets.budgets) | {"anonymous"}
    return seen.keep(Response({"users": sorted(names)}))


def route_handlers() -> list[Any]:
    """Compare's and Usage's data handlers (under the console's path)."""
    return [compare, usage, requests_page, one_request, export, users]
