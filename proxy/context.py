"""What a capability receives when the app starts: the contract beside the exchange.

Capabilities (meters, carbon, the ledger, telemetry) code against this module and
:mod:`proxy.exchange` only; the composition root (:mod:`proxy.app`) imports them,
never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx

from config.settings import Settings
from proxy.backends import BackendRouter
from proxy.exchange import Stage
from proxy.gate import Gate


@dataclass
class AppContext:
    """What components share: settings, the gate, the backend client, app state."""

    settings: Settings
    gate: Gate
    client: httpx.AsyncClient
    router: BackendRouter
    state: dict[str, Any] = field(default_factory=dict)
    """Components publish here what endpoints need (e.g. ``ledger``, ``meters``)."""
    ready_checks: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    """Each returns ``{"name", "ok", ...}`` for ``/readyz``."""
    strip_client_auth: bool = False
    """Set by the auth component when joulegate authenticates users itself."""
    admin_guard: Callable[[Mapping[str, str]], Awaitable[object]] | None = None
    """Set by the auth component in ``keys`` mode: raises 401 or 403 unless the
    (lower-cased) headers carry an admin key. Endpoints that show every user's
    figures (``/metrics``) ask it."""


Component = Callable[[AppContext], AbstractAsyncContextManager[Stage | None]]
