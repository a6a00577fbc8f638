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
class MachinePower:
    """Each machine's live power (its meters' sampler), by machine name, in the order the
    machines opened: what ``/metrics``, the OTel device instruments and the console read
    when they are scraped. Published by the meters component (:func:`machine_power`)."""

    by_machine: dict[str, PowerReadings] = field(default_factory=dict)

    @property
    def first(self) -> PowerReadings | None:
        """The first machine's meters (the only one without ``[[machines]]``)."""
        return next(iter(self.by_machine.values()), None)


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """Published by the auth component when joulegate authenticates callers itself
    (``keys`` mode, or ``auto``, which may become ``keys`` while serving)."""

    strips: Callable[[], bool]
    """Asked per request whether the client's ``Authorization`` is joulegate's key, to keep
    from the backend (always in ``keys`` mode; in ``auto`` once a key exists)."""
    admin_guard: Callable[[Mapping[str, str]], Awaitable[object]]
    """Raises 401 or 403 unless the (lower-cased) headers carry an admin key. Endpoints
    that show every user's figures (``/metrics``, ``/readyz``'s details) ask it."""


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
    fleet: Fleet | None = None
    """Every machine; None builds one machine from ``gate`` and ``router`` (tests)."""
    _resources: dict[type[Any], Any] = field(default_factory=dict, repr=False)
    ready_checks: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    """Each returns ``{"name", "ok", ...}`` for ``/readyz``."""

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


def machine_power(ctx: AppContext) -> MachinePower:
    """The context's :class:`MachinePower`, published on first use (each machine's meters
    component adds its sampler to it)."""
    found = ctx.get(MachinePower)
    if found is None:
        found = MachinePower()
        ctx.publish(found)
    return found
