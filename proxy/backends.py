"""Several model servers behind one joulegate, routed by the request's ``model``.

Each backend either lists its models in the settings or is asked for them
(``GET /v1/models``) at start-up and every ``backend_refresh_s``. The rules:

* one backend: every request goes to it, whatever its ``model`` (the backend
  answers for models it does not have, as it would without joulegate). It is
  still asked for its models, at start-up and every ``backend_refresh_s``, so
  that metrics can name them (:attr:`BackendRouter.models`); a backend that is
  down then does not stop start-up;
* several: a request goes to the backend serving its ``model``; a model no
  backend serves is ``404 model_not_found`` listing the models that exist; a
  request without a ``model`` goes to the first backend;
* a backend that is down keeps the models it had: they answer
  ``502 backend_unreachable`` (not 404) until it is back;
* two backends claiming one model is a start-up error naming both (configured
  ``models`` are checked when the settings load, discovered ones here). A
  refresh that finds a new clash keeps the earlier owner and logs a warning.

All backends of one machine share its gate and meters (they share its power);
with ``[[machines]]`` each machine has a router of its own, and the machines'
:meth:`BackendRouter.union` lists every model and may find a model on several.
joulegate's own look-ups are sent with ``User-Agent: joulegate``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import httpx

from config import BackendSettings
from config.errors import BackendUnreachable, ConfigError, ModelNotFound

log = logging.getLogger("joulegate.backends")

DISCOVERY_TIMEOUT_S = 5.0
"""Limit for one ``GET /v1/models`` to a backend."""
USER_AGENT = "joulegate"
"""``User-Agent`` of joulegate's own requests to backends (not the ones it forwards)."""


PROVIDERS = {
    "llamacpp": "llama.cpp",
    "llama.cpp": "llama.cpp",
    "library": "ollama",
    "ollama": "ollama",
    "vllm": "vllm",
}
"""``owned_by`` of a server's ``/v1/models`` entries → ``gen_ai.provider.name``:
llama.cpp's server says ``llamacpp``, Ollama ``library`` (its registry's models),
vLLM ``vllm``."""


def provider_of(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The serving software a model listing names, if it names one (the first entry
    that does wins); None when no ``owned_by`` is known."""
    for e in entries:
        owner = e.get("owned_by")
        if isinstance(owner, str) and owner.lower() in PROVIDERS:
            return PROVIDERS[owner.lower()]
    return None


@dataclass
class Backend:
    """One model server and what joulegate knows about it now."""

    name: str
    url: str
    """Base URL without a trailing slash."""
    configured: tuple[str, ...] = ()
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model id → the entry as the backend gave it in ``/v1/models``."""
    up: bool = True
    error: str | None = None
    """Why the last look-up failed, while it is down."""
    provider: str | None = None
    """The serving software its ``/v1/models`` names (``llama.cpp``, ``ollama``,
    ``vllm``); None until it says."""


class BackendRouter:
    """Which backend serves which model; refreshed in the background."""

    def __init__(self, backends: Sequence[BackendSettings], client: httpx.AsyncClient) -> None:
        self.backends = [
            Backend(
                b.label,
                b.url.rstrip("/"),
                b.models,
                {m: {"id": m, "object": "model", "owned_by": b.label} for m in b.models},
            )
            for b in backends
        ]
        self._client = client
        self._owner: dict[str, Backend] = {}
        self._shared = False
        self._rebuild(strict=False)

    @classmethod
    def union(cls, routers: Sequence[BackendRouter], client: httpx.AsyncClient) -> BackendRouter:
        """One router over several machines' backends (the same objects, so what one
        learns the other knows). A model may be on several machines: it routes to
        one that is up. It is rebuilt by :meth:`rebuild`, never refreshed itself."""
        out = cls([], client)
        out.backends = [b for r in routers for b in r.backends]
        out._shared = True
        out._rebuild(strict=False)
        return out

    def rebuild(self) -> None:
        """Re-read which backend serves which model (after the backends changed)."""
        self._rebuild(strict=False)

    @property
    def single(self) -> bool:
        """Only one backend: it gets every request."""
        return len(self.backends) == 1

    @property
    def models(self) -> Set[str]:
        """Every model some backend serves now (configured or listed): the bounded
        set metrics name models from."""
        return self._owner.keys()

    async def discover(self) -> None:
        """Ask every backend without configured models for its models (start-up).

        A clash between two backends stops start-up; a backend that is down is
        logged and asked again at the next refresh.
        """
        await self.refresh()
        if not self.single:  # one backend cannot clash with itself
            self._rebuild(strict=True)
        for b in self.backends:
            state = ", ".join(sorted(b.models)) or "no models yet"
            log.info("backend %s at %s: %s%s", b.name, b.url, state, "" if b.up else " (down)")

    async def refresh(self) -> None:
        """One round of ``GET /v1/models`` to the backends that need it."""
        await asyncio.gather(*(self._ask(b) for b in self.backends))
        self._rebuild(strict=False)

    async def _ask(self, b: Backend) -> None:
        try:
            r = await self._client.get(
                b.url + "/v1/models",
                headers={"user-agent": USER_AGENT},
                timeout=DISCOVERY_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            b.up, b.error = False, f"{type(exc).__name__}: {exc}"
            return
        if r.status_code >= 500:
            b.up, b.error = False, f"GET /v1/models answered {r.status_code}"
            return
        b.up, b.error = True, None  # it answers; a 4xx only means it lists no models
        if r.status_code != 200:
            return
        try:
            data = r.json().get("data")
        except (ValueError, AttributeError):
            return
        if not isinstance(data, list):
            return
        entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        b.provider = provider_of(entries) or b.provider
        if not b.configured:
            b.models = {e["id"]: e for e in entries}

    def _rebuild(self, *, strict: bool) -> None:
        owner: dict[str, Backend] = {}
        for b in self.backends:
            for m in b.models:
                first = owner.get(m)
                if first is None or (self._shared and b.up and not first.up):
                    owner[m] = b
                elif self._shared:
                    continue
                elif strict:
                    raise ConfigError(
                        f"model {m!r} is served by both backend {first.name!r} ({first.url}) "
                        f"and {b.name!r} ({b.url}); give each backend its own `models`"
                    )
                else:
                    log.warning("model %r on %s is already served by %s", m, b.name, first.name)
        self._owner = owner

    def mark(self, backend: Backend, *, up: bool, error: str | None = None) -> None:
        """What forwarding learnt: the backend answered, or could not be reached."""
        backend.up, backend.error = up, (None if up else error)

    def pick(self, gated: bool, method: str, endpoint: str, model: str | None) -> Backend | None:
        """The backend for a request; None when joulegate answers it itself (the union
        ``GET /v1/models`` of several backends)."""
        if gated:
            return self.route(model)
        if self.single:
            return self.backends[0]
        if method == "GET" and endpoint == "models":
            return None
        if endpoint.startswith("models/"):
            return self.for_path_model(endpoint.removeprefix("models/"))
        return self.backends[0]

    def route(self, model: str | None) -> Backend:
        """The backend for ``model``; 404 when none serves it, 502 when its server is down."""
        if self.single or model is None:
            return self.backends[0]
        b = self._owner.get(model)
        if b is None:
            known = ", ".join(sorted(self._owner)) or "none"
            raise ModelNotFound(
                f"The model `{model}` does not exist on this joulegate. Models: {known}",
                code="model_not_found",
                param="model",
            )
        if not b.up and self._shared:
            b = next((o for o in self.backends if o.up and model in o.models), b)
        if not b.up:
            raise BackendUnreachable(
                f"the backend {b.name!r} serving {model!r} is down ({b.error})",
                code="backend_unreachable",
            )
        return b

    def owner(self, model: str | None) -> Backend | None:
        """The backend ``model`` goes to (the only one, or the one listing it); None
        when none lists it."""
        if self.single or model is None:
            return self.backends[0]
        return self._owner.get(model)

    def provider(self, backend: str | None, model: str | None) -> str | None:
        """What serves a request: the named backend's software, else that of the
        backend ``model`` routes to; None when it has not said."""
        for b in self.backends:
            if b.name == backend:
                return b.provider
        if self.single or model is None:
            return self.backends[0].provider
        owner = self._owner.get(model)
        return owner.provider if owner is not None else None

    def for_path_model(self, model_id: str) -> Backend:
        """The backend for ``GET /v1/models/{id}`` (the first one when unknown)."""
        return self._owner.get(model_id, self.backends[0])

    def models_json(self) -> dict[str, Any]:
        """``GET /v1/models``: the union, each entry as its backend gave it."""
        return {"object": "list", "data": [b.models[m] for m, b in sorted(self._owner.items())]}

    def health(self) -> list[dict[str, Any]]:
        """One ``/readyz`` check per backend."""
        out: list[dict[str, Any]] = []
        for b in self.backends:
            check: dict[str, Any] = {
                "name": "backend",
                "backend": b.name,
                "ok": b.up,
                "url": b.url,
                "models": sorted(b.models),
            }
            if b.error:
                check["error"] = b.error
            out.append(check)
        return out
