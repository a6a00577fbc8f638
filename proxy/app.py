"""The Litestar application, the composition root: lifespan, stage order, routes.

It stands above every capability package (meters, accounting, telemetry) and imports
them; they code against :mod:`proxy.context` and :mod:`proxy.exchange` only.

Resources (the backend HTTP client, the gate, every stage's meters, database
and exporters) are opened in one lifespan and closed there; nothing is created
at import time. Capabilities join as *components*: async context managers that
receive the :class:`AppContext` and yield a :class:`~proxy.exchange.Stage` (or
None), so tests can build an app with fakes instead of hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from litestar import Litestar, MediaType, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from accounting.admin_routes import route_handlers as admin_routes
from accounting.carbon import carbon
from accounting.forecast.routes import route_handlers as forecast_routes
from accounting.forecast.stage import forecast_component
from accounting.ledger.owners import owners_component
from accounting.ledger.routes import route_handlers as ledger_routes
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config.errors import BadRequest, NotFound, PayloadTooLarge, ProxyError
from config.settings import Settings
from meters import machines_component
from proxy.console import console_component, console_router
from proxy.context import AppContext, ClientAuth, Component
from proxy.exchange import Pipeline, Stage
from proxy.forward import Forwarder
from proxy.intake import gated_paths
from proxy.machines import Fleet
from proxy.observability import (
    access_log_component,
    metrics_endpoint,
    prometheus_component,
    telemetry_component,
)
from proxy.transport import open_transport
from proxy.wire import internal_error

log = logging.getLogger("joulegate")


def default_components() -> list[Component]:
    """The capabilities a real deployment runs, in pipeline order."""
    # Telemetry first: its span wraps the other stages and it reads their figures in
    # on_closed, after all of them have run on_finished.
    # The access log and Prometheus come before auth: a request auth refuses (401, budget
    # 429) is closed only by the stages up to the refusing one, and both must count it.
    # Resources (yielding no stage) open before the stages that use them; the
    # sampler and the intensity source are opened by their own components.
    return [
        accounting_resource,  # ledger, keys, budgets: auth, forecast and record read it
        owners_component,  # no machine of this gateway is served by another (a warning)
        telemetry_component(),
        access_log_component,
        prometheus_component,
        auth_component,  # before anything queues: 401 and budget 429 cost nothing
        machines_component,  # energy per request, by its machine's meters: the window is
        # on_admitted to on_finished
        carbon(),  # carbon reads the meters' energy: keep it after the meters component
        forecast_component(),  # after carbon: its endpoint prices CO2e at carbon's intensity
        console_component,  # after the ledger: its prompts' tickets are redeemed by auth
        record_component,  # last: records what every stage above has added
    ]


def default_route_handlers() -> list[Any]:
    """Litestar handlers the capabilities add beside the proxy (reports, /metrics)."""
    return [metrics_endpoint, *ledger_routes(), *admin_routes(), *forecast_routes()]


def create_app(
    settings: Settings,
    *,
    components: Sequence[Component] | None = None,
    route_handlers: Sequence[Any] | None = None,
    freeze_startup_heap: bool = False,
) -> JoulegateApp:
    """Build joulegate's ASGI app for ``settings``.

    ``components`` defaults to :func:`default_components` and ``route_handlers``
    to :func:`default_route_handlers`. With ``freeze_startup_heap`` (the server
    process: ``joulegate serve``), what start-up built is moved out of the garbage
    collector's sight while the app serves (:func:`gc.freeze`): Python's full
    collections otherwise walk those ~100,000 objects, stopping the event loop for
    ~50 ms each time one runs (0.2 ms after the freeze). It is process-wide, so it is
    for a process that serves one app.
    """
    comps = list(default_components() if components is None else components)
    routes = list(default_route_handlers() if route_handlers is None else route_handlers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:  # the app built below
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    timeout=httpx.Timeout(
                        settings.read_timeout_s, connect=settings.connect_timeout_s
                    ),
                    follow_redirects=False,
                    trust_env=False,
                )
            )
            transport = await stack.enter_async_context(open_transport(settings))
            fleet = Fleet.build(settings, client)
            await fleet.discover()
            refresher = asyncio.create_task(
                fleet.refresh_forever(settings.backend_refresh_s), name="backend-refresh"
            )
            stack.push_async_callback(_cancel, refresher)
            router = fleet.router
            ctx = AppContext(
                settings=settings,
                gate=fleet.machines[0].gate,
                client=client,
                router=router,
                fleet=fleet,
            )
            stages: list[Stage] = []
            for component in comps:
                stage = await stack.enter_async_context(component(ctx))
                if stage is not None:
                    stages.append(stage)
            app.forwarder = Forwarder(
                settings,
                transport,
                fleet,
                Pipeline(stages),
                strip_client_auth=auth.strips if (auth := ctx.get(ClientAuth)) else None,
            )
            app.state.ctx = ctx
            app.state.ready = ReadyChecks(ctx, settings.readyz_cache_s)
            for m in fleet.machines:
                log.info(
                    "joulegate forwarding to %s on machine %s (max_concurrency=%d, max_queue=%d)",
                    ", ".join(f"{b.name} {b.url}" for b in m.router.backends),
                    m.name,
                    m.settings.max_concurrency,
                    m.settings.max_queue,
                )
            if freeze_startup_heap:
                # Collect start-up's garbage first: frozen objects are never collected.
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                app.forwarder = None
                if freeze_startup_heap:
                    gc.unfreeze()

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if app.forwarder is None:
            raise RuntimeError("joulegate's app was served without its lifespan")
        await app.forwarder(scope, receive, send)

    mounts = [asgi("/v1", is_mount=True, copy_scope=False)(proxy)]
    if settings.ollama_native:
        mounts.append(asgi("/api", is_mount=True, copy_scope=False, name="ollama")(proxy))
    # The console's routes are Litestar's own, beside the proxy: never on its path.
    console = [console_router(settings.console)] if settings.console.enabled else []

    app = JoulegateApp(
        route_handlers=[healthz, readyz, *mounts, *routes, *console],
        # Route handlers get the context (and its typed resources) by injection.
        dependencies={"ctx": Provide(_context, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={
            ProxyError: _proxy_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        openapi_config=None,
        logging_config=None,
        # joulegate's own routes (the forecast's body) take what the proxy takes.
        request_max_body_size=settings.max_body_bytes,
    )
    # A path one of the handlers above owns stays theirs, whatever settings.gated_paths says.
    owned = [_route_pattern(r.path) for r in app.routes if r.path not in ("/v1", "/api")]
    app.max_body_bytes = settings.max_body_bytes
    app.direct_paths = frozenset(
        p for p in gated_paths(settings) if not any(o.fullmatch(p) for o in owned)
    )
    return app


class JoulegateApp(Litestar):
    """Litestar, with the forwarder's metered paths handed to it straight away.

    Every inference request would otherwise pass Litestar's exception middleware, its
    router and the ``/v1`` mount only to reach the forwarder, which handles its own
    errors: ~57 us a request under the overhead benchmark's load (3.5 % of the event
    loop's time by py-spy). Only exact paths the forwarder meters and no handler owns
    take the shortcut; every other spelling still reaches the forwarder through the
    mount, and the forwarder treats both alike.
    """

    forwarder: Forwarder | None = None
    """Set by the lifespan once every component is open."""
    direct_paths: frozenset[str] = frozenset()
    max_body_bytes: int = 0
    """``max_body_bytes``, for the 413 of joulegate's own routes."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI entry point: metered paths to the forwarder, the rest to Litestar."""
        forwarder = self.forwarder
        if forwarder is not None and scope["type"] == "http" and scope["path"] in self.direct_paths:
            await forwarder(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_pattern(path: str) -> re.Pattern[str]:
    """A Litestar route's path (``/v1/energy/requests/{lookup_id:str}``) as a regex."""
    parts = re.split(r"\{[^}]*\}", path)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def _context(request: Request[Any, Any, Any]) -> AppContext:
    """The app's :class:`AppContext`, for handlers that declare a ``ctx`` parameter."""
    ctx: AppContext = request.app.state.ctx
    return ctx


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@get("/healthz", media_type=MediaType.JSON, sync_to_thread=False)
def healthz(ctx: NamedDependency[AppContext]) -> dict[str, Any]:
    """joulegate itself is up; also shows the gates' state (every machine's together,
    and each machine's under ``machines``)."""
    gates = ctx.machines.gates()
    return {
        "status": "ok",
        "in_flight": sum(g["in_flight"] for g in gates.values()),
        "waiting": sum(g["waiting"] for g in gates.values()),
        "paused": all(g["paused"] for g in gates.values()),
        "machines": gates,
    }


class ReadyChecks:
    """``/readyz``'s checks, made at most once per ``readyz_cache_s``: asking every
    backend on each call made ``/readyz`` a cheap amplifier against them. Callers that
    arrive while a check runs share it."""

    def __init__(self, ctx: AppContext, cache_s: float) -> None:
        self._ctx = ctx
        self._cache_s = cache_s
        self._lock = asyncio.Lock()
        self._checks: list[dict[str, Any]] = []
        self._made_s = -math.inf

    async def get(self) -> list[dict[str, Any]]:
        """The checks, fresh within ``readyz_cache_s``."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._made_s >= self._cache_s:
                await self._ctx.machines.refresh()
                checks = self._ctx.machines.health()
                self._checks = checks + [check() for check in self._ctx.ready_checks]
                self._made_s = loop.time()
            return self._checks


@get("/readyz", media_type=MediaType.JSON)
async def readyz(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> Response[dict[str, Any]]:
    """Ready when every backend answers ``GET /v1/models`` and every component is fine
    (with several machines: one check per machine, its backends and its meters).

    The checks name the backends' URLs and models: when joulegate has keys only an
    admin key sees them; anyone else gets the status alone."""
    ready: ReadyChecks = request.app.state.ready
    checks = await ready.get()
    ok = all(c["ok"] for c in checks)
    body: dict[str, Any] = {"status": "ready" if ok else "not_ready"}
    if await _may_see_details(request, ctx):
        body["checks"] = checks
    return Response(body, status_code=200 if ok else 503)


async def _may_see_details(request: Request[Any, Any, Any], ctx: AppContext) -> bool:
    auth = ctx.get(ClientAuth)
    if auth is None:
        return True
    try:
        await auth.admin_guard({k.lower(): v for k, v in request.headers.items()})
    except ProxyError:  # no key, a user's key, or keys cannot be checked now
        return False
    return True


def _proxy_error(_: Request[Any, Any, Any], exc: ProxyError) -> Response[dict[str, Any]]:
    return Response(exc.to_json(), status_code=exc.status, headers=exc.headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own errors (no route, wrong method, its 500) in OpenAI's shape."""
    if exc.status_code == 404:
        err: ProxyError = NotFound("no such route", code="not_found")
    elif exc.status_code == 413:
        err = PayloadTooLarge(
            f"request body is larger than {getattr(request.app, 'max_body_bytes', '?')} bytes"
            " (max_body_bytes)",
            code="request_too_large",
        )
    elif exc.status_code == 405:
        # OpenAI's wording and type for a method a route does not take.
        err = BadRequest(f"Invalid method for URL ({request.method} {request.url.path})")
    elif exc.status_code < 500:
        err = BadRequest(str(exc.detail))
    else:
        err = ProxyError(str(exc.detail))
    return Response(err.to_json(), status_code=exc.status_code, headers=dict(exc.headers or {}))


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug in a joulegate route: logged, and still an OpenAI-shaped 500."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    err = internal_error(exc, "answering")
    return Response(err.to_json(), status_code=err.status)
