"""Forward one request to the backend: the raw ASGI hot path.

For each request under ``/v1/`` (and ``/api/`` for Ollama when enabled):

1. read the body (413 beyond ``max_body_bytes``), parse it on inference paths
   (400 on malformed JSON, without touching the backend);
2. run the pipeline's arrival hooks (auth, budgets: they may refuse);
3. on gated paths, wait for a slot on a machine that serves the model
   (:mod:`proxy.machines`: a free one first, else the first to free a slot) while
   watching for the client leaving (it then leaves the queue at once); a machine
   that cannot be reached gives the request to another that serves its model;
4. forward with aiohttp and relay the answer: whole for JSON (with an ``energy``
   object added), event by event for SSE (``energy`` rides in the last data
   chunk before ``[DONE]``);
5. close the window, run the finish hooks (meters, carbon, ledger) and only
   then send the last byte, so a recorded request is never lost.

Steps 3-4 run in a child task watched for ``http.disconnect``: if the client
leaves, that task is cancelled, which closes the backend response (so the
backend stops generating) and frees the slot, while the finish hooks still run
to record the cancelled request.

This module orchestrates; the seams are beside it: :mod:`proxy.intake` (paths,
methods, bodies), :mod:`proxy.transport` (the backend connections and their errors),
:mod:`proxy.relay` (one relay per wire format), :mod:`proxy.schema` (what is read from
answers) and :mod:`proxy.wire` (what joulegate itself writes to the client).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable

import aiohttp
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from config.errors import ProxyError
from config.settings import Settings
from proxy.backends import Backend
from proxy.bounded import BoundedSend, ClientStalled
from proxy.dispatch import Dispatch
from proxy.exchange import Exchange, Pipeline, new_request_id
from proxy.gate import Window
from proxy.intake import (
    FORWARDED_METHODS,
    BodyReader,
    Hold,
    answer_method,
    ask_usage,
    forward_headers,
    gated_paths,
    method_not_allowed,
    parse_body,
)
from proxy.machines import Fleet
from proxy.paths import canonical_path
from proxy.relay import Relayer, RelayState, body_chunks, decoder_for, read_whole
from proxy.task import request_task
from proxy.transport import BackendTransport, Outgoing, backend_error
from proxy.wire import (
    DisconnectWatch,
    internal_error,
    relayed,
    request_id_header,
    send_error,
    send_json,
)

log = logging.getLogger("joulegate.proxy")

__all__ = ["Forwarder"]


class Forwarder:
    """The ASGI app mounted at ``/v1`` (and ``/api``) that proxies to the backend."""

    def __init__(
        self,
        settings: Settings,
        transport: BackendTransport,
        fleet: Fleet,
        pipeline: Pipeline,
        *,
        strip_client_auth: Callable[[], bool] | None = None,
    ) -> None:
        self._s = settings
        self._transport = transport
        self._bodies = BodyReader(settings)
        self._relay = Relayer(settings, pipeline)
        self._pipeline = pipeline
        self._router = fleet.router
        self._dispatch = Dispatch(fleet, pipeline, self._bodies)
        # Asked per request: auth mode auto starts stripping the moment a key exists.
        self._strip_auth: Callable[[], bool] = (
            (lambda: True)  # joulegate sends its own key instead
            if settings.backend_api_key
            else strip_client_auth or (lambda: False)
        )
        self._gated = gated_paths(settings)
        mounts = frozenset({"/v1", "/api"} if settings.ollama_native else {"/v1"})
        # Clients send the same few spellings over and over; a refusal is not cached.
        self._canonical = functools.lru_cache(maxsize=256)(
            functools.partial(canonical_path, mounts=mounts)
        )
        self._auth_header = (
            ("authorization", f"Bearer {settings.backend_api_key}")
            if settings.backend_api_key
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request (an ASGI app)."""
        if scope["type"] != ScopeType.HTTP:
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path_b, _, query_b = raw_path.partition(b"?")
        query = query_b or scope.get("query_string", b"")
        method: str = scope["method"]
        window = Window(arrived_s=time.monotonic())
        try:
            # One spelling for the gate, the ledger and the backend URL (sent as is).
            path = self._canonical(path_b)
        except ProxyError as err:
            shown = path_b[:200].decode("latin-1")  # the refused spelling, bounded
            await self._refuse_early(send, err, method, shown, window)
            return
        if method not in FORWARDED_METHODS:
            if method in ("HEAD", "OPTIONS"):
                await answer_method(send, method)
            else:
                await self._refuse_early(
                    send, method_not_allowed(method, path), method, path, window
                )
            return
        gated = method == "POST" and path in self._gated
        try:
            body = await self._bodies.read(scope, receive)
        except ProxyError as err:
            await self._refuse_early(send, err, method, path, window)
            return
        # A gated body stays counted against max_queued_bytes until it is admitted.
        hold = Hold(len(body))
        if not gated:
            self._bodies.let_go(hold)
        try:
            await self._handle(scope, receive, send, window, method, path, query, body, hold)
        finally:
            self._bodies.let_go(hold)

    async def _refuse_early(
        self, send: Send, err: ProxyError, method: str, path: str, window: Window
    ) -> None:
        """Refuse before the request is parsed (bad path, method, body): the client gets
        the error and an ``x-request-id``; the log and the metrics see it; nothing else
        (no backend, no ledger row) does."""
        ex = Exchange(
            request_id=new_request_id(),
            method=method,
            path=path,
            endpoint="other",
            headers={},
            window=window,
            arrived_at=dt.datetime.now(dt.UTC),
            gated=False,
        )
        ex.status, ex.failure = err.status, err.error_type
        window.finished_s = time.monotonic()
        try:
            await send_error(send, err, [(b"x-queue-ms", b"0.0"), request_id_header(ex)])
        finally:
            await self._pipeline.closed(ex)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        window: Window,
        method: str,
        path: str,
        query: bytes,
        body: bytes,
        hold: Hold,
    ) -> None:
        gated = method == "POST" and path in self._gated
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            parsed = parse_body(body, path) if gated else None
            if parsed is not None:
                self._bodies.hold_parsed(hold, len(body))
            task = request_task(headers, parsed) if gated else None
        except ProxyError as err:
            await self._refuse_early(send, err, method, path, window)
            return
        ex = Exchange(
            request_id=new_request_id(),
            method=method,
            path=path,
            endpoint=path.split("/", 2)[-1] if path.count("/") >= 2 else path,
            headers=headers,
            window=window,
            arrived_at=dt.datetime.now(dt.UTC),
            gated=gated,
            body=parsed,
            task=task,
        )
        ex.scratch["_hold"] = hold
        if parsed is not None:
            model = parsed.get("model")
            ex.model_requested = model if isinstance(model, str) else None
            # Ollama's native API streams unless told not to; OpenAI's does not.
            ex.stream = (
                parsed.get("stream", True) is not False
                if path.startswith("/api/")
                else parsed.get("stream") is True
            )
            body = ask_usage(ex, parsed, body, enabled=self._s.stream_usage)
        # Identify the caller (and check budgets) before anything else: an unknown
        # key learns nothing, not even which models exist.
        try:
            await self._pipeline.arrival(ex)
            backend = self._dispatch.arrive(ex)
        except Exception as exc:
            if isinstance(exc, ProxyError):
                refusal = exc
            else:
                log.exception("a stage failed on arrival of %s %s", method, path)
                refusal = internal_error(exc, "admitting")
            ex.status = refusal.status
            ex.failure = refusal.error_type
            ex.window.finished_s = time.monotonic()
            await send_error(send, refusal, [(b"x-queue-ms", b"0.0"), request_id_header(ex)])
            await self._pipeline.refused(ex)
            return
        if backend is None and not ex.gated:  # GET /v1/models, several backends: ours
            ex.status = 200
            ex.window.finished_s = time.monotonic()
            try:
                await send_json(send, 200, self._router.models_json(), [request_id_header(ex)])
            finally:
                await self._pipeline.closed(ex)
            return
        if backend is not None:
            ex.backend, ex.backend_url = backend.name, backend.url
        await self._serve(ex, backend, scope, receive, send, method, path, query, body)

    async def _serve(
        self,
        ex: Exchange,
        backend: Backend | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        path: str,
        query: bytes,
        body: bytes,
    ) -> None:
        url = path + ("?" + query.decode("latin-1") if query else "")  # its base at admission
        headers = forward_headers(scope, self._strip_auth(), self._auth_header)
        request = Outgoing(method, url, headers, body, ex.gated)
        relay = RelayState()
        error: ProxyError | None = None
        send = BoundedSend(send, self._s.write_timeout_s)
        # Every forwarded request, gated or not, lets go of its backend connection (and
        # its slot) the moment its client leaves.
        watch = DisconnectWatch(receive)
        try:
            try:
                await self._forward(ex, request, backend, relay, send)
            except asyncio.CancelledError:
                if not watch.took_back():
                    raise  # not (only) the client leaving: the server stops
                ex.failure = "client_disconnected"
            finally:
                watch.close()
        except ClientStalled:
            log.info("client stalled on %s %s: answer dropped after write_timeout_s", method, path)
            ex.failure = "client_stalled"
        except ProxyError as err:
            error = err
            ex.failure = ex.failure or err.error_type
            ex.status = err.status
        except Exception as exc:
            log.exception("forwarding %s %s failed", method, path)
            error = internal_error(exc, "handling")
            ex.failure = ex.failure or "internal_error"
            ex.status = error.status
        finally:
            # Runs on disconnect too: record what was used, then free the slot.
            ex.window.finished_s = ex.window.finished_s or time.monotonic()
            if ex.status is None and ex.failure in ("client_disconnected", "client_stalled"):
                ex.status = 499
            try:
                await self._finish(ex, relay, error, send)
            finally:
                send.close()

    async def _forward(
        self, ex: Exchange, out: Outgoing, backend: Backend | None, relay: RelayState,
        send: BoundedSend,
    ) -> None:  # fmt: skip
        if ex.gated:
            backend = await self._dispatch.admit(ex, backend)
        else:
            ex.window.admitted_s = time.monotonic()
        if backend is None:  # pragma: no cover - ungated requests are routed on arrival
            raise RuntimeError(f"{ex.request_id} was never routed")
        response, backend = await self._dispatch.send(ex, out, backend, self._transport)
        where = backend.url
        ex.window.first_byte_s = time.monotonic()
        ex.status = relay.status = response.status
        relay.headers = [(k, v) for k, v in response.raw_headers if relayed(k)]
        ctype = response.headers.get("content-type", "")
        parsed = ctype.startswith(("text/event-stream", "application/x-ndjson"))
        parsed = parsed or (ex.gated and ctype.startswith("application/json"))
        # joulegate asks for identity; a backend that compresses anyway is decoded for
        # parsing (and the client gets the decoded body) so nothing is lost silently.
        decoder = decoder_for(response.headers.get("content-encoding", "")) if parsed else None
        encoded: list[tuple[bytes, bytes]] = []
        if decoder is not None:
            encoded = [(k, v) for k, v in relay.headers if k.lower() == b"content-encoding"]
            relay.headers = [(k, v) for k, v in relay.headers if k.lower() != b"content-encoding"]
        complete = False
        try:
            if ctype.startswith("text/event-stream"):
                relay.streaming = "sse"
                await self._relay.relay_stream(ex, body_chunks(response, decoder), relay, send)
            elif ctype.startswith("application/x-ndjson"):
                relay.streaming = "ndjson"  # Ollama's native streams
                await self._relay.relay_lines(ex, body_chunks(response, decoder), relay, send)
            elif ctype.startswith("application/json") or response.content_length is not None:
                limit = self._s.max_parsed_answer_bytes
                as_is = await read_whole(response, relay, decoder, encoded, limit)
                if ex.gated and ctype.startswith("application/json") and not as_is:
                    if len(relay.body) <= limit:
                        self._relay.note_json(ex, relay)
                    else:  # parsing would take several times its size in memory
                        log.info(
                            "answer of %d bytes relayed unparsed (max_parsed_answer_bytes)",
                            len(relay.body),
                        )
            else:  # anything else of unknown length (audio, …) streams through as it is
                relay.streaming = "raw"
                await self._relay.relay_raw(ex, response.content.iter_any(), relay, send)
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise backend_error(exc, where, connecting=False) from exc
        finally:
            # Closing (not releasing) an unfinished response drops the connection, which
            # is how the backend learns that the client left and stops generating.
            if complete:
                response.release()
            else:
                response.close()
            ex.window.finished_s = time.monotonic()

    async def _finish(
        self, ex: Exchange, relay: RelayState, error: ProxyError | None, send: BoundedSend
    ) -> None:
        w = ex.window
        if ex.completion_tokens is None and ex.stream_content_chunks:
            # The backend sent no usage (llama.cpp's server ignores include_usage):
            # count content chunks, one token each on servers that stream per token.
            ex.completion_tokens = ex.stream_content_chunks
            ex.completion_tokens_counted = True
        try:
            await self._pipeline.finished(ex)
        finally:
            if ex.gated and w.admitted_s is not None:
                self._dispatch.release(ex, w.duration_s)
        try:
            if ex.failure in ("client_disconnected", "client_stalled"):
                return
            if relay.started:
                await self._relay.finish_stream(ex, relay, error, send)
            elif error is not None:
                await ex.settled()
                await send_error(send, error, self._relay.timing_headers(ex))
            else:
                await self._relay.finish_whole(ex, relay, send)
        except ClientStalled:
            # Recorded already; the client stopped reading its very last bytes.
            log.info("client stalled on the end of %s %s", ex.method, ex.path)
        finally:
            await ex.settled()  # the row is in before on_closed, whatever happened
            await self._pipeline.closed(ex)
