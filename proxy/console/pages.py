"""The console's HTML pages, sign-in and sign-out, and its static files.

Pages are rendered on the server (Jinja2, autoescaped) and filled by small scripts
from the JSON routes beside them; no page has an inline script. A page a visitor
may not see yet sends them to sign in (``303``); a signed-in non-admin asking for
an admin page gets ``403``.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect

from accounting.auth import Identity
from config.errors import ProxyError
from proxy.console.guard import Viewer, check_post, console_state, viewer
from proxy.context import AppContext

NAV = (
    ("playground", "Playground"),
    ("compare", "Compare"),
    ("usage", "Usage"),
    ("live", "Live"),
    ("admin", "Admin"),
)


def _visible(seen: Viewer, page: str) -> bool:
    if page == "playground":
        return seen.who is not None or seen.state.settings.public
    if page == "live":
        return seen.sees_live
    if page == "admin":
        return seen.is_admin
    return seen.who is not None


def render(seen: Viewer, template: str, *, status: int = 200, **values: Any) -> Response[str]:
    """A page: the template with what every page shows (nav, user, CSRF token)."""
    base = seen.state.settings.path
    assets = seen.state.assets

    def asset(name: str) -> str:
        found = assets.get(name)
        return f"{base}/static/{name}" + (f"?v={found.etag.strip(chr(34))}" if found else "")

    html = seen.state.templates.get_template(template).render(
        base=base,
        asset=asset,
        csrf=seen.session.csrf,
        who=seen.who,
        mode=seen.mode,
        nav=[(p, title) for p, title in NAV if _visible(seen, p)],
        public=seen.state.settings.public,
        **values,
    )
    return seen.keep(Response(html, media_type=MediaType.HTML, status_code=status))


def _sign_in_first(seen: Viewer, page: str) -> Response[Any]:
    base = seen.state.settings.path
    return seen.keep(Redirect(f"{base}/signin?next={page}", status_code=303))


def _refused(seen: Viewer, err: ProxyError) -> Response[str]:
    return render(seen, "error.html", status=err.status, page="error", message=err.message)


async def _page(
    request: Request[Any, Any, Any], ctx: AppContext, page: str, **values: Any
) -> Response[Any]:
    seen = await viewer(request, ctx)
    if not _visible(seen, page):
        if seen.who is None:
            return _sign_in_first(seen, page)
        title = "Admin" if page == "admin" else "Live"
        return render(seen, "error.html", status=403, page="error",
                      message=f"{title} is for admin keys.")  # fmt: skip
    return render(seen, f"{page}.html", page=page, **values)


@get("/", sync_to_thread=False)
def home(ctx: NamedDependency[AppContext]) -> Redirect:
    """The console's front door: the Playground."""
    return Redirect(f"{console_state(ctx).settings.path}/playground", status_code=303)


@get("/playground")
async def playground(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Prompt a model; see the forecast, the queue, the answer and what it cost."""
    return await _page(request, ctx, "playground")


@get("/compare")
async def compare(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The model x task table, as a heatmap and bars; a study's summary.json too."""
    return await _page(request, ctx, "compare")


@get("/usage")
async def usage(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Energy and CO2e per day, the budget, the requests and the CSV export."""
    return await _page(request, ctx, "usage", record=None)


@get("/requests/{lookup_id:str}")
async def one_request(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext], lookup_id: FromPath[str]
) -> Any:
    """One request's whole record (the script asks for it: another user's is 404)."""
    return await _page(request, ctx, "usage", record=lookup_id)


@get("/live")
async def live(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Each machine's power, queue, energy since start, meters and backends, live."""
    return await _page(request, ctx, "live", machines=[m.settings for m in ctx.machines.machines])


@get("/admin")
async def admin(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Users, keys and budgets (admin keys only)."""
    return await _page(request, ctx, "admin")


@get("/signin")
async def signin_form(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The sign-in form (``keys`` mode); other modes have nothing to sign in to."""
    seen = await viewer(request, ctx)
    if seen.mode != "keys":
        return seen.keep(Redirect(f"{seen.state.settings.path}/playground", status_code=303))
    nxt = _next(request.query_params.get("next"))
    return render(seen, "signin.html", page="signin", next=nxt, error=None)


@post("/signin", status_code=303)
async def signin(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Check the key once and start a signed-in session (a new id); the key is not kept."""
    seen = await viewer(request, ctx)
    form = await request.form()
    nxt = _next(form.get("next"))
    try:
        check_post(request, seen, form.get("csrf"))
    except ProxyError as err:
        return _refused(seen, err)
    key = str(form.get("key") or "").strip()
    stored = None
    if seen.acc is not None and seen.mode == "keys" and key:
        stored = await seen.acc.keys.verify(key)
    if stored is None or stored.revoked_ts is not None:
        message = "That key was revoked." if stored is not None else "That key is not valid."
        return render(seen, "signin.html", status=401, page="signin", next=nxt, error=message)
    who = Identity(stored.user, stored.prefix, stored.is_admin, known=True)
    seen.state.sessions.end(seen.session.sid)
    fresh = seen.state.sessions.new(who)
    response: Response[Any] = Redirect(f"{seen.state.settings.path}/{nxt}", status_code=303)
    response.set_cookie(seen.cookie(fresh.sid))
    return response


@post("/signout", status_code=303)
async def signout(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """End the session and send the visitor to sign in."""
    seen = await viewer(request, ctx)
    form = await request.form()
    try:
        check_post(request, seen, form.get("csrf"))
    except ProxyError as err:
        return _refused(seen, err)
    seen.state.sessions.end(seen.session.sid)
    response: Response[Any] = Redirect(f"{seen.state.settings.path}/signin", status_code=303)
    response.set_cookie(seen.cookie("", max_age=0))
    return response


def _next(value: Any) -> str:
    """Where to go after signing in: one of the console's pages, nothing else."""
    pages = {p for p, _ in NAV}
    return value if isinstance(value, str) and value in pages else "playground"


@get("/static/{name:path}", sync_to_thread=False)
def static(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext],
           name: FromPath[str]) -> Response[bytes]:  # fmt: skip
    """A file from the installed package (no CDN); 304 when the browser has it."""
    asset = console_state(ctx).assets.get(name.lstrip("/"))
    if asset is None:
        return Response(b"not found", status_code=404, media_type=MediaType.TEXT)
    headers = {"etag": asset.etag, "cache-control": "public, max-age=86400"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def route_handlers() -> list[Any]:
    """The pages' handlers (under the console's path)."""
    return [home, playground, compare, usage, one_request, live, admin, signin_form, signin,
            signout, static]  # fmt: skip
