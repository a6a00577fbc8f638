"""What a capability receives when the app starts: the contract beside the exchange.

Capabilities (meters, carbon, the ledger, telemetry) code against this module and
:mod:`proxy.exchange` only; the composition root (:mod:`proxy.app`) imports them,
never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from config.errors import ConfigError
from config.settings import Settings
from proxy.backends import BackendRouter
from proxy.exchange import Stage
from proxy.gate import Gate
from proxy.machines import Fleet, Machine

T = TypeVar("T")


class PowerReadings(Protocol):
    """The meters' live figures, as the observability stages read them at scrape time
    (the meters' sampler is one; it never blocks on a meter): one machine's."""

    def power_w(self, over_s: float = 1.0) -> Mapping[str, float | None]:
        """Average power of each component over the last ``over_s``."""
        ...

    def device_readings(self) -> Sequence[Mapping[str, float | str | None]]:
        """Each device's ``id``, ``type``, ``power_w`` and ``energy_j`` (since start-up)."""
        ...

    @property
    def unattributed_j(self) -> float:
        """Joules the meters measured while no request was in flight, since start-up."""
        ...


@dataclass
class AppContext:
    """What components share: settings, the machines, the backend client, and the typed
    resources components open (published by their class, read by their class).

    ``gate`` and ``router`` are the first machine's gate and every machine's backends
    (one machine's without ``[[machines]]``); ``fleet`` holds every machine."""

    settings: Settings
    gate: Gate
    client: httpx.AsyncClient
    router: BackendRouter
    power: PowerReadings | None = None
    """Set by the meters component: what ``/metrics`` and the OTel device instruments
    read when they are scraped (the first machine's meters)."""
    machine_power: dict[str, PowerReadings] = field(default_factory=dict)
    """Set by the meters component: each machine's meters, by machine name."""
    fleet: Fleet | None = None
    """Every machine; None builds one machine from ``gate`` and ``router`` (tests)."""
    _resources: dict[type[Any], Any] = field(default_factory=dict, repr=False)
    ready_checks: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    """Each returns ``{"name", "ok", ...}`` for ``/readyz``."""
    strip_client_auth: Callable[[], bool] | None = None
    """Set by the auth component when joulegate authenticates users itself: asked per
    request whether the client's ``Authorization`` is joulegate's key, to keep from the
    backend (always in ``keys`` mode; in ``auto`` once a key exists). None: never."""
    admin_guard: Callable[[Mapping[str, str]], Awaitable[object]] | None = None
    """Set by the auth component in ``keys`` mode: raises 401 or 403 unless the
    (lower-cased) headers carry an admin key. Endpoints that show every user's
    figures (``/metrics``) ask it."""

    def __post_init__(self) -> None:
        if self.fleet is None:
            machine = self.settings.machine_list[0]
            self.fleet = Fleet(
                [Machine(machine.name, machine, self.gate, self.router)], self.client
            )

    @property
    def machines(self) -> Fleet:
        """Every machine (see :mod:`proxy.machines`)."""
        if self.fleet is None:  # pragma: no cover - set by __post_init__
            raise RuntimeError("AppContext without machines")
        return self.fleet

    def publish(self, resource: object) -> None:
        """Make ``resource`` what :meth:`get` returns for its class (one per class)."""
        self._resources[type(resource)] = resource

    def get(self, kind: type[T]) -> T | None:
        """The published resource of class ``kind`` (or of a subclass of it: an
        ``IntensitySource`` is a fixed or a live one), or None if no component opened one."""
        found = self._resources.get(kind)
        if isinstance(found, kind):
            return found
        return next((r for r in self._resources.values() if isinstance(r, kind)), None)

    def require(self, kind: type[T], by: str) -> T:
        """Like :meth:`get`, for a component that cannot run without ``kind``: a
        composition that forgot to open it fails at start-up, naming both."""
        found = self.get(kind)
        if found is None:
            raise ConfigError(f"{by} needs the {kind.__name__} resource, which nothing opened")
        return found

    def withdraw(self, kind: type[Any]) -> None:
        """Forget the resource of class ``kind`` (its component is closing it)."""
        for key in [k for k, r in self._resources.items() if isinstance(r, kind)]:
            del self._resources[key]


Component = Callable[[AppContext], AbstractAsyncContextManager[Stage | None]]
