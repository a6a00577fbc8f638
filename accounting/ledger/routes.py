"""HTTP endpoints over the ledger: ``/v1/energy/report``, ``/v1/energy/requests``,
``/v1/energy/requests/{id}`` and ``/v1/energy/budget``.

They authenticate like the proxy does (a joulegate key in ``keys`` mode).
A caller sees only their own rows; an admin key may name any ``user`` or
leave it out to see everyone. Asking for another user's rows without an admin
key is 403, never an empty answer that would reveal nothing either way. The one
exception is a single request looked up by id: another user's id is 404, exactly
like an unknown one, so that ids cannot be probed.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from accounting.auth import Identity
from accounting.ledger.rows import LedgerRow, row_from_sql
from accounting.ledger.stage import Accounting
from accounting.reports import build_report, parse_query
from config.errors import BadRequest, Forbidden, NotFound
from proxy.context import AppContext

MAX_PAGE = 500
SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1
"""The range of SQLite's INTEGER: row ids and ``before`` fit in it."""


async def _caller(request: Request[Any, Any, Any], ctx: AppContext) -> tuple[Accounting, Identity]:
    acc = ctx.get(Accounting)
    if acc is None:
        raise NotFound("the ledger is not enabled on this joulegate", code="not_found")
    headers = {k.lower(): v for k, v in request.headers.items()}
    return acc, await acc.auth.identify(headers)


def _whose(who: Identity, asked: str | None) -> str | None:
    """The user whose rows to show: None (everyone) only for an admin."""
    if who.is_admin:
        return asked or None
    if asked and asked != who.user:
        raise Forbidden("only an admin key can read another user's energy", code="forbidden")
    return who.user


@get("/v1/energy/report", media_type=MediaType.JSON)
async def energy_report(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Energy and CO2e totals, grouped; same filters as ``joulegate report``."""
    acc, who = await _caller(request, ctx)
    params = dict(request.query_params)
    unknown = set(params) - {"user", "since", "until", "month", "by", "unit"}
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    params["user"] = _whose(who, params.get("user"))
    report = await build_report(acc.ledger, parse_query(params))
    return report.to_json()


@get("/v1/energy/requests", media_type=MediaType.JSON)
async def energy_requests(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """The caller's requests, newest first; ``limit`` (1-500) and ``before`` (an id) page."""
    acc, who = await _caller(request, ctx)
    q = request.query_params
    user = _whose(who, q.get("user"))
    limit = page_limit(q.get("limit"), 50, MAX_PAGE)
    before = query_integer(q.get("before"), "before")
    where, params = whose_rows(user)
    if before is not None:
        where.append("id < ?")
        params.append(before)
    rows = await acc.ledger.fetchall(
        f"SELECT * FROM requests WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",  # noqa: S608
        [*params, limit + 1],
    )
    data = [row_from_sql(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": [_public(r) for r in data],
        "has_more": len(rows) > limit,
        "next_before": data[-1].id if len(rows) > limit else None,
    }


@get("/v1/energy/requests/{lookup_id:str}", media_type=MediaType.JSON)
async def energy_request(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext], lookup_id: FromPath[str]
) -> dict[str, Any]:
    """One request's row, by joulegate's id (``x-request-id``) or the backend's response
    id (``chatcmpl-…``, ``resp_…``): for clients whose SDK drops the ``energy`` field.

    The row is committed before the answer's last byte, so it is here as soon as the
    client has its answer. A response id that several of the caller's rows share (a
    backend that does not make them unique) gives the newest of them.
    """
    acc, who = await _caller(request, ctx)
    mine, owner = ("", []) if who.is_admin else (" AND user = ?", [who.user])
    rows: list[Any] = []
    # joulegate's own id first, then the backend's: two indexed look-ups.
    for column in ("request_id", "response_id"):
        rows = await acc.ledger.fetchall(
            f"SELECT * FROM requests WHERE {column} = ?{mine} ORDER BY id DESC LIMIT 1",  # noqa: S608
            [lookup_id, *owner],
        )
        if rows:
            break
    if not rows:
        raise NotFound(f"no request with id {lookup_id!r}", code="not_found")
    return _public(row_from_sql(rows[0]))


@get("/v1/energy/budget", media_type=MediaType.JSON)
async def energy_budget(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Where the caller stands: each of their budgets' limit, use, remainder and reset,
    in Wh and gCO2e (an empty list without a budget). An admin key may ask for any
    ``user``; this host's own requests count at once, other hosts' ``budgets.refresh_s``
    late, as for the check itself."""
    acc, who = await _caller(request, ctx)
    params = dict(request.query_params)
    unknown = sorted(set(params) - {"user"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}", param=unknown[0])
    user = _whose(who, params.get("user")) or who.user
    status = acc.budgets.status(user)
    return {"object": "list", "user": user, "data": [] if status is None else [status.to_json()]}


def page_limit(text: str | None, default: int, most: int) -> int:
    """The ``limit`` query parameter of a list: ``default`` when absent, else 1 to
    ``most`` (BadRequest otherwise, 0 included)."""
    limit = query_integer(text, "limit")
    limit = default if limit is None else limit
    if not 1 <= limit <= most:
        raise BadRequest(f"limit must be between 1 and {most}", param="limit")
    return limit


def whose_rows(user: str | None) -> tuple[list[str], list[Any]]:
    """A ``WHERE`` clause's parts (joined with ``AND``) and its parameters: ``user``'s
    rows, or every row for None."""
    if user is None:
        return ["1"], []
    return ["1", "user = ?"], [user]


def query_integer(text: str | None, name: str) -> int | None:
    """A query parameter as an integer SQLite can hold (None when absent or empty)."""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", param=name) from None
    if not SQLITE_MIN <= value <= SQLITE_MAX:  # else sqlite3 raises OverflowError
        raise BadRequest(
            f"{name} must be an integer between {SQLITE_MIN} and {SQLITE_MAX}", param=name
        )
    return value


def _public(row: LedgerRow) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(row)
    return out


def route_handlers() -> list[Any]:
    """The ledger's Litestar handlers, for ``default_route_handlers``."""
    return [energy_report, energy_requests, energy_request, energy_budget]
