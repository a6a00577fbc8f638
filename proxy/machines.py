"""The measurement machines behind one joulegate, and which one a request goes to.

Each :class:`Machine` has its own gate (queue, slots, cool-down) and its own
backends (a :class:`~proxy.backends.BackendRouter` over them); its meters are the
meters component's (:mod:`meters.machines`). The :class:`Fleet` chooses, for each
gated request, among the machines that serve its model and whose backend is up:

* a machine with a free slot at once: an idle one before a partly busy one, ties
  in turn (round robin), so equal machines share the work;
* else the request waits in the queue of every such machine with room and is
  admitted by the first that frees a slot (:func:`~proxy.gate.acquire_first`): the
  machine that starts it soonest, decided at admission, so a request never waits
  in one machine's queue while another that serves its model is idle.

A model no machine serves is ``404 model_not_found``; a model whose machines all
have their backends down is ``502 backend_unreachable``. A configuration without
``[[machines]]`` is one machine, ``local``: every request goes to it, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from config.errors import BackendUnreachable, ModelNotFound
from config.machines import MachineSettings
from config.settings import Settings
from proxy.backends import Backend, BackendRouter
from proxy.gate import Gate, Window, acquire_first

log = logging.getLogger("joulegate.machines")


@dataclass(eq=False)
class Machine:
    """One measurement machine: its gate and its backends."""

    name: str
    settings: MachineSettings
    gate: Gate
    router: BackendRouter
    last_model: str | None = None
    """The model of the request it admitted last (for a cool-down on a model change)."""
    resting: bool = False
    """Whether it is in a model change's cool-down now (its gate is not paused for it:
    the request that waits holds its slot). The console's Live page shows it."""

    def serves(self, model: str | None) -> bool:
        """Whether one of its backends lists ``model`` (any model: None)."""
        return model is None or model in self.router.models

    def up_for(self, model: str | None) -> bool:
        """Whether the backend it would send ``model`` to is up."""
        backend = self.router.owner(model)
        return backend is not None and backend.up

    def backend_for(self, model: str | None) -> Backend:
        """Its backend for ``model`` (502 when that one is down)."""
        return self.router.route(model)


async def _after_model_change(machine: Machine, model: str | None, window: Window) -> None:
    """With ``cooldown_on_model_change``: a request for another model than the last
    one waits ``cooldown_s`` holding its slot (the machine rests), counted as thermal
    wait; its energy window opens after it."""
    last = machine.last_model
    if model is not None:
        machine.last_model = model
    s = machine.settings
    if not (s.cooldown_on_model_change and s.cooldown_s > 0) or last in (None, model):
        return
    machine.gate.cooldowns += 1
    log.info("machine %s cools down %.0f s: model %s after %s", machine.name, s.cooldown_s,
             model, last)  # fmt: skip
    machine.resting = True
    try:
        await asyncio.sleep(s.cooldown_s)
    except asyncio.CancelledError:
        machine.gate.release()  # its client left during the pause
        raise
    finally:
        machine.resting = False
    window.thermal_wait_s += s.cooldown_s
    window.admitted_s = time.monotonic()


def build_machine(settings: MachineSettings, client: httpx.AsyncClient) -> Machine:
    """A machine with its gate and router, from its settings."""
    gate = Gate(
        settings.max_concurrency,
        settings.max_queue,
        cooldown_s=settings.cooldown_s,
        cooldown_every=settings.cooldown_every,
    )
    return Machine(settings.name, settings, gate, BackendRouter(settings.backends, client))


class Fleet:
    """Every machine; chooses one for each gated request at admission."""

    def __init__(self, machines: Sequence[Machine], client: httpx.AsyncClient) -> None:
        self.machines = list(machines)
        self.by_name = {m.name: m for m in self.machines}
        self.single = len(self.machines) == 1
        self.router = (
            self.machines[0].router
            if self.single
            else BackendRouter.union([m.router for m in self.machines], client)
        )
        """Every backend of every machine: the model list, and look-ups by model."""
        self._turns: dict[str | None, int] = {}
        """Per model (None: a route without one): where its next scan starts. One count
        for every model let alternating traffic land each model on one machine."""
        self._by_gate = {id(m.gate): m for m in self.machines}
        self._serving: dict[str, list[Machine]] = {}
        self._index()

    def _index(self) -> None:
        """Which machines serve which model (the models change only on a refresh)."""
        serving: dict[str, list[Machine]] = {}
        for m in self.machines:
            for model in m.router.models:
                serving.setdefault(model, []).append(m)
        self._serving = serving

    @classmethod
    def build(cls, settings: Settings, client: httpx.AsyncClient) -> Fleet:
        """The machines ``settings`` describe (one, ``local``, without ``[[machines]]``)."""
        return cls([build_machine(m, client) for m in settings.machine_list], client)

    async def discover(self) -> None:
        """Ask every machine's backends for their models (start-up)."""
        for m in self.machines:
            await m.router.discover()
        self.router.rebuild()
        self._index()

    async def refresh(self) -> None:
        """One round of ``GET /v1/models`` to every machine's backends."""
        await asyncio.gather(*(m.router.refresh() for m in self.machines))
        self.router.rebuild()
        self._index()

    async def refresh_forever(self, interval_s: float) -> None:
        """Refresh until cancelled; failures are logged, never raised."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the machines' models failed")

    def candidates(self, model: str | None, *, avoid: Machine | None = None) -> list[Machine]:
        """The machines that may serve ``model`` now, in the order of preference for
        a free slot (ties in turn); 404 when none serves it, 502 when the backends of
        all that do are down."""
        if self.single:
            return self.machines
        serving = self.machines if model is None else self._serving.get(model)
        if not serving:
            known = ", ".join(sorted(self.router.models)) or "none"
            raise ModelNotFound(
                f"The model `{model}` does not exist on this joulegate. Models: {known}",
                code="model_not_found",
                param="model",
            )
        if len(serving) > 1:  # ties in turn: each request of a model starts one further
            turn = self._turns[model] = self._turns.get(model, -1) + 1  # keys: served models
            k = turn % len(serving)
            serving = serving[k:] + serving[:k]
        if avoid is not None:
            serving = [m for m in serving if m is not avoid]
        if not any(m.up_for(model) for m in serving):  # the first one, as a rule
            down = ", ".join(m.name for m in serving) or "none other"
            raise BackendUnreachable(
                f"every machine serving {model!r} has its backend down ({down})",
                code="backend_unreachable",
            )
        return serving

    async def admit(
        self, machines: Sequence[Machine], window: Window, model: str | None = None
    ) -> Machine:
        """A slot on one of ``machines`` whose backend for ``model`` is up (see the
        module's docstring); QueueFull when every queue is full."""
        machine = await self._slot(machines, window, model)
        await _after_model_change(machine, model, window)
        return machine

    async def _slot(
        self, machines: Sequence[Machine], window: Window, model: str | None
    ) -> Machine:
        if len(machines) == 1:
            await machines[0].gate.acquire(window)
            return machines[0]
        for m in machines:  # an idle machine before one with a slot left
            if m.gate.in_flight == 0 and m.gate.free and m.up_for(model):
                await m.gate.acquire(window)
                return m
        up = [m.gate for m in machines if m.up_for(model)]
        gate = await acquire_first(up or [m.gate for m in machines], window)
        return self._by_gate[id(gate)]

    def health(self) -> list[dict[str, Any]]:
        """``/readyz``'s backend checks, each naming its machine, and one check per
        machine (ok while one of its backends is up)."""
        out: list[dict[str, Any]] = []
        for m in self.machines:
            backends = m.router.health()
            for check in backends:
                check["machine"] = m.name
            out += backends
            if not self.single:
                out.append({
                    "name": "machine", "machine": m.name, "ok": any(c["ok"] for c in backends),
                    "in_flight": m.gate.in_flight, "waiting": m.gate.waiting,
                    "paused": m.gate.paused,
                })  # fmt: skip
        return out

    def gates(self) -> dict[str, dict[str, Any]]:
        """Each machine's gate now (for ``/healthz``)."""
        return {
            m.name: {"in_flight": m.gate.in_flight, "waiting": m.gate.waiting,
                     "paused": m.gate.paused, "cooldowns": m.gate.cooldowns}
            for m in self.machines
        }  # fmt: skip
