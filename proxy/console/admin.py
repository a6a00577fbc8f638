"""Admin: users, keys (create, shown once; revoke) and budgets (set, clear).

Each action is a call of the HTTP admin API (:mod:`accounting.admin_routes`) made
in-process with a ticket standing for the signed-in admin, so the console checks its
input exactly as the API and the CLI do, answers the same errors, and leaves the same
audit line naming the admin. What the console adds: the session and its CSRF token on
every change, and revoking a key ends the console sessions signed in with it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from config.errors import BadRequest
from proxy.console.guard import Viewer, check_post, viewer
from proxy.console.inprocess import scope_for, whole
from proxy.context import AppContext

API = "/v1/energy/admin"


async def _call(
    request: Request[Any, Any, Any],
    seen: Viewer,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
) -> Response[Any]:
    """The admin API's answer to ``method path`` for the signed-in admin."""
    who = seen.require_admin()
    ticket = seen.state.sessions.ticket(who)
    headers = [(b"authorization", f"Bearer {ticket}".encode())]
    raw = b""
    if body is not None:
        headers.append((b"content-type", b"application/json"))
        raw = json.dumps(body).encode()
    client = (request.client.host, request.client.port) if request.client else None
    scope = scope_for(f"{API}/{path}", headers, client, method=method,
                      query=urlencode(query or {}))  # fmt: skip
    status, answer = await whole(request.app, scope, raw)
    return seen.keep(Response(answer, status_code=status, headers={"cache-control": "no-store"}))


async def _admin_post(request: Request[Any, Any, Any], ctx: AppContext) -> tuple[Viewer, Any]:
    seen = await viewer(request, ctx)
    check_post(request, seen)
    seen.require_admin()
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("send a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object", code="invalid_json")
    return seen, body


@get(["/api/admin/users", "/api/admin/keys", "/api/admin/budgets"], media_type=MediaType.JSON)
async def listing(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Users, keys (revoked ones too) or budgets."""
    seen = await viewer(request, ctx)
    what = request.url.path.rpartition("/")[2]
    return await _call(
        request, seen, "GET", what, query={"all": "true"} if what == "keys" else None
    )


@post("/api/admin/keys", media_type=MediaType.JSON, status_code=201)
async def create_key(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[Any]:
    """A new key (``{"user", "admin"}``): the answer is the only place it is ever shown."""
    seen, body = await _admin_post(request, ctx)
    return await _call(request, seen, "POST", "keys", body=body)


@post("/api/admin/keys/{prefix:str}/revoke", media_type=MediaType.JSON, status_code=200)
async def revoke_key(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext], prefix: FromPath[str]
) -> Response[Any]:
    """Revoke one key; the console sessions signed in with it end now."""
    seen = await viewer(request, ctx)
    check_post(request, seen)
    answer = await _call(request, seen, "DELETE", f"keys/{quote(prefix, safe='')}")
    if answer.status_code == 200:
        seen.state.sessions.end_prefix(prefix)
    return answer


@post("/api/admin/budgets", media_type=MediaType.JSON, status_code=200)
async def set_budget(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[Any]:
    """Set a user's budget (``{"user", "period", "energy_wh", "co2e_g"}``)."""
    seen, body = await _admin_post(request, ctx)
    return await _call(request, seen, "PUT", "budgets", body=body)


@post("/api/admin/budgets/clear", media_type=MediaType.JSON, status_code=200)
async def clear_budget(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[Any]:
    """Remove a user's budget (``{"user"}``)."""
    seen, body = await _admin_post(request, ctx)
    user = body.get("user")
    if not isinstance(user, str):
        raise BadRequest("name the user", param="user")
    return await _call(request, seen, "DELETE", "budgets", query={"user": user})


def route_handlers() -> list[Any]:
    """Admin's handlers (under the console's path)."""
    return [listing, create_key, revoke_key, set_budget, clear_budget]
