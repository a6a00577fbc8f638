"""Who is looking at the console, and what every console answer carries.

:func:`viewer` turns a request into a :class:`Viewer`: its session (made on the first
visit) and its identity, under the same rules as the energy routes. In ``keys`` mode
the identity is the one the session signed in with (None until then); in ``open``
mode everyone is ``anonymous``; in ``trust`` mode the gateway in front names the
user (``auth.user_header``). Admins are the holders of admin keys, so only ``keys``
mode has them.

:func:`check_post` guards every state-changing request: the session's CSRF token
(form field ``csrf`` or header ``x-csrf-token``) must match, and an ``Origin``
header, when the browser sends one, must be this console's own.

:func:`security_headers` is the console router's middleware: a strict
Content-Security-Policy (scripts, styles and everything else from joulegate itself,
no inline script, no framing) and its companions on every answer, errors included.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from accounting.auth import ANONYMOUS, Identity
from accounting.ledger.stage import Accounting
from config.errors import Forbidden, NotFound, Unauthorized
from proxy.console.sessions import COOKIE, Session
from proxy.console.state import ConsoleState
from proxy.context import AppContext

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


def security_headers(app: ASGIApp) -> ASGIApp:
    """Middleware: the security headers on every console answer (errors included);
    answers that set no ``cache-control`` are not stored (they hold a user's data)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                have = {bytes(k).lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if b"cache-control" not in have:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with)

    return wrapped


@dataclass(slots=True)
class Viewer:
    """One console request's visitor."""

    state: ConsoleState
    acc: Accounting | None
    session: Session
    fresh: bool
    """The session was made for this request: its cookie must be set."""
    who: Identity | None
    """None: not signed in (``keys`` mode)."""
    mode: str
    secure: bool
    """Served over TLS: the cookie gets ``Secure``."""

    @property
    def is_admin(self) -> bool:
        """Holds an admin key."""
        return self.who is not None and self.who.is_admin

    @property
    def sees_live(self) -> bool:
        """Live is for admins, and for everyone in ``open`` mode."""
        return self.is_admin or self.mode == "open"

    def require_user(self) -> Identity:
        """The identity, or 401 (not signed in)."""
        if self.who is None:
            raise Unauthorized("sign in to the console first", code="not_signed_in")
        return self.who

    def require_admin(self) -> Identity:
        """The identity of an admin, or 401/403."""
        who = self.require_user()
        if not who.is_admin:
            raise Forbidden("only an admin key may use this page", code="forbidden")
        return who

    def whose(self, asked: str | None) -> str | None:
        """Whose rows to show: the viewer's own; an admin may name any user or none
        (everyone); another user's asked for by a non-admin is 403."""
        who = self.require_user()
        if who.is_admin:
            return asked or None
        if asked and asked != who.user:
            raise Forbidden("only an admin key can read another user's energy", code="forbidden")
        return who.user

    def keep(self, response: Response[Any]) -> Response[Any]:
        """``response`` with the session cookie set when the session is new."""
        if self.fresh:
            response.set_cookie(self.cookie(self.session.sid))
        return response

    def cookie(self, sid: str, *, max_age: int | None = None) -> Cookie:
        """The session cookie: HttpOnly, SameSite=Strict, Secure over TLS, console path."""
        return Cookie(
            key=COOKIE,
            value=sid,
            path=self.state.settings.path,
            httponly=True,
            samesite="strict",
            secure=self.secure,
            max_age=max_age,
        )


def console_state(ctx: AppContext) -> ConsoleState:
    """The console's state, or 404 when the console is not running."""
    state = ctx.get(ConsoleState)
    if state is None:
        raise NotFound("the console is not enabled on this joulegate", code="not_found")
    return state


async def viewer(request: Request[Any, Any, Any], ctx: AppContext) -> Viewer:
    """The request's :class:`Viewer` (a new session on a first visit)."""
    state = console_state(ctx)
    acc = ctx.get(Accounting)
    session = state.sessions.get(request.cookies.get(COOKIE))
    fresh = session is None
    if session is None:
        session = state.sessions.new()
    mode = acc.auth.mode if acc is not None else "open"
    who: Identity | None
    if mode == "open" or acc is None:
        who = ANONYMOUS
    elif mode == "trust":
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            who = await acc.auth.identify(headers)
        except Unauthorized:
            who = None
    else:
        who = session.who
        if who is not None and who.key_prefix is not None and not _key_alive(acc, who.key_prefix):
            state.sessions.end(session.sid)  # its key was revoked: sign the session out
            session, fresh, who = state.sessions.new(), True, None
    secure = request.url.scheme == "https" or state.settings.secure_cookie
    return Viewer(state, acc, session, fresh, who, mode, secure)


def _key_alive(acc: Accounting, prefix: str) -> bool:
    return any(k.prefix == prefix and k.revoked_ts is None for k in acc.keys.all())


def check_post(request: Request[Any, Any, Any], seen: Viewer, token: str | None = None) -> None:
    """403 unless the request carries the session's CSRF token and, when the browser
    names one, comes from this console's own origin."""
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if not hmac.compare_digest(origin.encode(), own.encode()):
            raise Forbidden("cross-origin request refused", code="csrf_failed")
    if not seen.session.csrf_ok(token or request.headers.get("x-csrf-token")):
        raise Forbidden(
            "missing or stale CSRF token: reload the page and try again", code="csrf_failed"
        )
