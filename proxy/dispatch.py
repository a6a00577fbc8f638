"""Where a request goes: its backend, its machine, its slot there, and a move.

The forwarder asks :class:`Dispatch` at arrival (:meth:`Dispatch.arrive`: the
backend of an ungated request, or the machines a gated one may run on, refusing
with 404 or 502 before the queue), at admission (:meth:`Dispatch.admit`: a slot
on one of them, the backend there, then every stage's ``on_admitted``), when the
machine could not be reached (:meth:`Dispatch.send`, :meth:`Dispatch.move`) and at the end
(:meth:`Dispatch.release`). The machine is kept in the exchange's scratch.
"""

from __future__ import annotations

import logging

import aiohttp

from config.errors import BackendUnreachable, ProxyError
from proxy.backends import Backend
from proxy.exchange import Exchange, Pipeline
from proxy.intake import BodyReader
from proxy.machines import Fleet, Machine
from proxy.render import MACHINE_HEADER
from proxy.transport import BackendTransport, Outgoing

log = logging.getLogger("joulegate.proxy")

_MACHINES = "_machines"
_MACHINE = "_machine"


class Dispatch:
    """Routes requests over the fleet's machines (see the module's docstring)."""

    def __init__(self, fleet: Fleet, pipeline: Pipeline, bodies: BodyReader) -> None:
        self._fleet = fleet
        self._pipeline = pipeline
        self._bodies = bodies
        self.router = fleet.router

    def arrive(self, ex: Exchange) -> Backend | None:
        """The backend of an ungated request (None: joulegate answers it), or of a gated
        one on a single machine (its 404 and 502 before the queue, as ever); for a
        gated request, notes the machines it may run on (404 or 502 when none)."""
        if not ex.gated:
            return self.router.pick(False, ex.method, ex.endpoint, ex.model_requested)
        ex.scratch[_MACHINES] = self._fleet.candidates(ex.model_requested)
        if self._fleet.single:
            return self.router.route(ex.model_requested)
        return None  # its machine's, once admitted

    async def admit(self, ex: Exchange, backend: Backend | None = None) -> Backend:
        """Wait for a slot on one of the request's machines; the backend to send to
        there, once every stage's ``on_admitted`` has run."""
        try:
            machine = await self._fleet.admit(ex.scratch[_MACHINES], ex.window, ex.model_requested)
        finally:
            self._bodies.let_go(ex.scratch["_hold"])
        ex.scratch[_MACHINE] = machine
        ex.machine = machine.name
        ex.response_headers[MACHINE_HEADER] = machine.name
        if backend is None:
            backend = machine.backend_for(ex.model_requested)
        ex.backend, ex.backend_url = backend.name, backend.url
        await self._pipeline.admitted(ex)
        return backend

    async def move(self, ex: Exchange, err: BackendUnreachable) -> Backend | None:
        """Its machine could not be reached: admit the request on another that serves
        its model and return the backend there; None when there is none (the 502
        stands). Nothing reached the backend, so the request starts afresh there."""
        old: Machine | None = ex.scratch.get(_MACHINE)
        if not ex.gated or old is None or self._fleet.single:
            return None
        try:
            ex.scratch[_MACHINES] = self._fleet.candidates(ex.model_requested, avoid=old)
        except ProxyError:
            return None
        log.warning("machine %s unreachable (%s); request %s moves to another machine",
                    old.name, err, ex.request_id)  # fmt: skip
        try:
            return await self.admit(ex)
        finally:
            # The old slot is given back once the new machine holds the request (and
            # the stages have closed its old window); if it never got one, the end of
            # the request gives it back.
            if ex.scratch.get(_MACHINE) is not old:
                old.gate.release(None)

    async def send(
        self, ex: Exchange, out: Outgoing, backend: Backend, transport: BackendTransport
    ) -> tuple[aiohttp.ClientResponse, Backend]:
        """Send ``out`` (its URL the path, the backend's base put before it) to
        ``backend``, or, when that cannot be reached, to the backend of another machine
        the request moves to (:meth:`move`); the response and the backend that gave it."""
        tail = out.url
        while True:
            if ex.backend_headers:  # the stages' own (traceparent), set at admission
                extra = {k.lower() for k in ex.backend_headers}
                out.headers = [(k, v) for k, v in out.headers if k not in extra]
                out.headers += [(k.lower(), v) for k, v in ex.backend_headers.items()]
            out.url = backend.url + tail
            try:
                response = await transport.send(out, backend.url)
            except BackendUnreachable as err:
                self.router.mark(backend, up=False, error=str(err.__cause__ or err))
                moved = await self.move(ex, err)
                if moved is None:
                    raise
                backend = moved
            else:
                self.router.mark(backend, up=True)
                return response, backend

    def release(self, ex: Exchange, duration_s: float | None) -> None:
        """Give the request's slot back (it was admitted)."""
        machine: Machine | None = ex.scratch.get(_MACHINE)
        if machine is not None:
            machine.gate.release(duration_s)
