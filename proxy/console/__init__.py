"""joulegate's web console, served by joulegate itself at ``console.path`` (``/console``).

Five pages (Playground, Compare, Usage, Live, Admin) rendered on the server and
filled by small scripts from JSON routes beside them; every asset comes from the
installed package. What other packages use: :func:`console_router` (the routes,
for the composition root) and :func:`console_component` (its state: sessions,
the public playground's limit, templates, static files).

Nothing here is on the proxy's path: the console is a set of Litestar routes of
its own, and a Playground prompt is an ordinary ``/v1`` request made in-process.
"""

from __future__ import annotations

from litestar import Router

from config.console import ConsoleSettings
from proxy.console import admin, data, live, pages, playground
from proxy.console.guard import security_headers
from proxy.console.state import ConsoleState, console_component


def console_router(settings: ConsoleSettings) -> Router:
    """Every console route under ``settings.path``, each answer with the security headers."""
    return Router(
        path=settings.path,
        route_handlers=[
            *pages.route_handlers(),
            *playground.route_handlers(),
            *data.route_handlers(),
            *live.route_handlers(),
            *admin.route_handlers(),
        ],
        middleware=[security_headers],
    )


__all__ = ["ConsoleState", "console_component", "console_router"]
