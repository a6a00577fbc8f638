"""The HTTP admin API: users, keys and budgets under ``/v1/energy/admin/``.

What ``joulegate keys`` and ``joulegate users`` do from the shell, over HTTP, for
admin keys only (401 without a good key, 403 with a user's key or while the auth
mode has no keys: ``open``, ``trust``, or ``auto`` before the first key, which the
CLI makes). The input is checked as the CLI checks it, errors are OpenAI-shaped,
and every change is one line on the ``joulegate.audit`` logger naming the admin
(user and key prefix) and what they did, never a key.

``GET    /v1/energy/admin/users``                every user with a key or a budget
``GET    /v1/energy/admin/keys``                 keys by prefix (``?user=``, ``?all=true``)
``POST   /v1/energy/admin/keys``                 ``{"user", "admin"}``: 201, the key once
``DELETE /v1/energy/admin/keys/{prefix}``        revoke one key
``DELETE /v1/energy/admin/keys?user=NAME``       revoke every key of a user
``GET    /v1/energy/admin/budgets``              every budget and what is used of it
``PUT    /v1/energy/admin/budgets``              ``{"user", "period", "energy_wh", "co2e_g"}``
``DELETE /v1/energy/admin/budgets?user=NAME``    remove a user's budget

User names travel in the body or the query, never the path: a name may hold any
printable character, ``/`` included.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath

from accounting.auth import KEY_START, PREFIX_CHARS, ApiKey, Identity, check_user
from accounting.budgets import PERIODS, check_limit, new_budget
from accounting.ledger.stage import Accounting
from config.errors import BadRequest, Forbidden, NotFound
from proxy.context import AppContext

audit = logging.getLogger("joulegate.audit")

BUDGET_FIELDS = frozenset({"user", "period", "energy_wh", "co2e_g"})
NO_STORE = {"cache-control": "no-store"}
"""On the answer that carries a new key: no cache may keep it."""


async def _admin(request: Request[Any, Any, Any], ctx: AppContext) -> tuple[Accounting, Identity]:
    """The ledger and the calling admin, or the 401/403/404 that stops them."""
    acc = ctx.get(Accounting)
    if acc is None:
        raise NotFound("the ledger is not enabled on this joulegate", code="not_found")
    if acc.auth.mode != "keys":
        raise Forbidden(
            f"the admin API needs an admin key, and auth mode is {acc.auth.mode!r}: create"
            " one with `joulegate keys create --user NAME --admin` (auth.mode auto or keys)",
            code="admin_api_off",
        )
    headers = {k.lower(): v for k, v in request.headers.items()}
    return acc, await acc.auth.require_admin(headers)


def _audit(who: Identity, what: str, *args: object) -> None:
    audit.info("admin %r (key %s…) " + what, who.user, who.key_prefix, *args)


async def _object(request: Request[Any, Any, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object body, with no field outside ``allowed`` (400 otherwise)."""
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw) if raw.strip() else None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"could not parse the JSON body: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
    return body


def _query(request: Request[Any, Any, Any], allowed: set[str]) -> dict[str, str]:
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}", param=unknown[0])
    return params


def _user(value: object, param: str = "user") -> str:
    """A user name as the CLI takes it (400 otherwise)."""
    if not isinstance(value, str):
        raise BadRequest(f"{param} must be a string (the user's name)", param=param)
    try:
        return check_user(value)
    except ValueError as exc:
        raise BadRequest(f"{param}: {exc}", param=param, code="invalid_user") from None


def _flag(value: str | None, param: str) -> bool:
    if value in (None, "", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise BadRequest(f"{param} must be true or false", param=param)


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {"prefix": key.prefix, "user": key.user, "admin": key.is_admin,
            "created": key.created_ts, "revoked": key.revoked_ts}  # fmt: skip


@get("/v1/energy/admin/users", media_type=MediaType.JSON)
async def admin_users(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Every user with a key (revoked ones too) or a budget: their keys and budget."""
    acc, _ = await _admin(request, ctx)
    _query(request, set())
    users: dict[str, dict[str, Any]] = {}

    def entry(user: str) -> dict[str, Any]:
        return users.setdefault(
            user, {"user": user, "keys": 0, "revoked_keys": 0, "admin": False, "budget": None}
        )

    for key in acc.keys.all():
        e = entry(key.user)
        if key.revoked_ts is None:
            e["keys"] += 1
            e["admin"] = e["admin"] or key.is_admin
        else:
            e["revoked_keys"] += 1
    for user in acc.budgets.budgets:
        status = acc.budgets.status(user)
        entry(user)["budget"] = None if status is None else status.to_json()
    return {"object": "list", "data": [users[u] for u in sorted(users)]}


@get("/v1/energy/admin/keys", media_type=MediaType.JSON)
async def admin_keys(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Keys by prefix, oldest first: active ones, or all with ``?all=true``; ``?user=``."""
    acc, _ = await _admin(request, ctx)
    q = _query(request, {"user", "all"})
    show_all = _flag(q.get("all"), "all")
    user = _user(q["user"]) if q.get("user") else None
    shown = [
        _key_json(k)
        for k in acc.keys.all()
        if (show_all or k.revoked_ts is None) and (user is None or k.user == user)
    ]
    return {"object": "list", "data": shown}


@post("/v1/energy/admin/keys", media_type=MediaType.JSON, status_code=201)
async def admin_create_key(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[dict[str, Any]]:
    """A new key for ``user`` (``admin``: may use this API): the key is in this answer
    only; joulegate keeps its salted digest."""
    acc, who = await _admin(request, ctx)
    body = await _object(request, frozenset({"user", "admin"}))
    user = _user(body.get("user"))
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("admin must be true or false", param="admin")
    key, stored = await acc.keys.create(user, admin=admin)
    _audit(who, "created %s %s… for user %r", "an admin key" if admin else "a key",
           stored.prefix, user)  # fmt: skip
    return Response(
        {"object": "api_key", "key": key, **_key_json(stored)}, status_code=201, headers=NO_STORE
    )


@delete("/v1/energy/admin/keys/{prefix:str}", media_type=MediaType.JSON, status_code=200)
async def admin_revoke_key(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext], prefix: FromPath[str]
) -> dict[str, Any]:
    """Revoke the key with this prefix (404 when no active key has it)."""
    acc, who = await _admin(request, ctx)
    if len(prefix) != PREFIX_CHARS or not prefix.startswith(KEY_START):
        # A whole key in a URL would end up in access logs: only its prefix is taken.
        raise BadRequest(
            f"give the key's prefix ({KEY_START} and {PREFIX_CHARS - len(KEY_START)}"
            " characters, as keys are listed), never the key itself",
            param="prefix",
        )
    count = await acc.keys.revoke(prefix)
    if not count:
        raise NotFound(f"no active key has the prefix {prefix!r}", code="key_not_found")
    _audit(who, "revoked key %s…", prefix)
    return {"object": "revocation", "prefix": prefix, "user": None, "revoked": count}


@delete("/v1/energy/admin/keys", media_type=MediaType.JSON, status_code=200)
async def admin_revoke_user_keys(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Revoke every active key of ``?user=`` (404 when they have none)."""
    acc, who = await _admin(request, ctx)
    q = _query(request, {"user"})
    user = _user(q.get("user"))
    count = await acc.keys.revoke_user(user)
    if not count:
        raise NotFound(f"user {user!r} has no active key", code="key_not_found")
    _audit(who, "revoked the %d active key(s) of user %r", count, user)
    return {"object": "revocation", "prefix": None, "user": user, "revoked": count}


@get("/v1/energy/admin/budgets", media_type=MediaType.JSON)
async def admin_budgets(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Every budget with what is used of it this period, by user."""
    acc, _ = await _admin(request, ctx)
    _query(request, set())
    statuses = (acc.budgets.status(u) for u in sorted(acc.budgets.budgets))
    return {"object": "list", "data": [s.to_json() for s in statuses if s is not None]}


@put("/v1/energy/admin/budgets", media_type=MediaType.JSON, status_code=200)
async def admin_set_budget(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Set (or replace) a user's budget: ``energy_wh`` and/or ``co2e_g`` per ``period``
    (``day`` or ``month``, UTC; default ``month``)."""
    acc, who = await _admin(request, ctx)
    body = await _object(request, BUDGET_FIELDS)
    user = _user(body.get("user"))
    limits: dict[str, float | None] = {}
    for name in ("energy_wh", "co2e_g"):
        try:
            limits[name] = check_limit(body.get(name), name)
        except ValueError as exc:
            raise BadRequest(str(exc), param=name, code="invalid_budget") from None
    energy_wh, co2e_g = limits["energy_wh"], limits["co2e_g"]
    period = body.get("period", "month")
    try:
        budget = new_budget(user, period, energy_wh, co2e_g, names=("energy_wh", "co2e_g"))
    except ValueError as exc:
        param = "period" if period not in PERIODS else None
        raise BadRequest(str(exc), param=param, code="invalid_budget") from None
    await acc.budgets.set(budget)
    _audit(who, "set the %s budget of user %r: %s Wh, %s gCO2e", budget.period, user,
           energy_wh, co2e_g)  # fmt: skip
    status = acc.budgets.status(user)
    return status.to_json() if status is not None else {}


@delete("/v1/energy/admin/budgets", media_type=MediaType.JSON, status_code=200)
async def admin_clear_budget(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """Remove ``?user=``'s budget (404 when they have none)."""
    acc, who = await _admin(request, ctx)
    user = _user(_query(request, {"user"}).get("user"))
    if not await acc.budgets.clear(user):
        raise NotFound(f"user {user!r} has no budget", code="budget_not_found")
    _audit(who, "removed the budget of user %r", user)
    return {"object": "budget.deleted", "user": user, "deleted": True}


def route_handlers() -> list[Any]:
    """The admin API's Litestar handlers, for ``default_route_handlers``."""
    return [admin_users, admin_keys, admin_create_key, admin_revoke_key, admin_revoke_user_keys,
            admin_budgets, admin_set_budget, admin_clear_budget]  # fmt: skip
