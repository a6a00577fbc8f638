"""Forward one request to the backend: the raw ASGI hot path.

For each request under ``/v1/`` (and ``/api/`` for Ollama when enabled):

1. read the body (413 beyond ``max_body_bytes``), parse it on inference paths
   (400 on malformed JSON, without touching the backend);
2. run the pipeline's arrival hooks (auth, budgets: they may refuse);
3. on gated paths, wait for a slot in the FIFO gate while watching for the
   client leaving (it then leaves the queue at once);
4. forward with aiohttp and relay the answer: whole for JSON (with an ``energy``
   object added), event by event for SSE (``energy`` rides in the last data
   chunk before ``[DONE]``);
5. close the window, run the finish hooks (meters, carbon, ledger) and only
   then send the last byte, so a recorded request is never lost.

Steps 3-4 run in a child task watched for ``http.disconnect``: if the client
leaves, that task is cancelled, which closes the backend response (so the
backend stops generating) and frees the slot, while the finish hooks still run
to record the cancelled request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from config.errors import (
    BackendUnreachable,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    ProxyError,
    QueueFull,
)
from config.settings import Settings
from proxy.backends import Backend, BackendRouter
from proxy.exchange import Exchange, Pipeline
from proxy.gate import Gate, Window
from proxy.paths import canonical_path
from proxy.sse import EventSplitter
from proxy.task import request_task
from proxy.transport import BackendTransport, Outgoing, backend_error

log = logging.getLogger("joulegate.proxy")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)
OLLAMA_INFERENCE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
_FORWARDED_METHODS = frozenset({"GET", "POST", "DELETE"})
"""What OpenAI-compatible APIs use; HEAD and OPTIONS joulegate answers itself."""
_ALLOW = (b"allow", b"GET, POST, DELETE, HEAD, OPTIONS")
# Request headers never forwarded: hop-by-hop ones, and those aiohttp sets itself.
_DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"accept-encoding",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"x-request-id",  # joulegate sends its own: the ledger's request_id
        # The headers joulegate sets itself: a backend's (or another joulegate's in
        # front of one) would be sent twice, and `float(headers["x-energy-j"])` fail.
        b"x-power-w",
        b"x-queue-ms",
        b"x-duration-ms",
        b"x-thermal-wait-ms",
    }
)
_OWNED_RESPONSE_PREFIXES = (b"x-energy-", b"x-co2e-", b"x-carbon-", b"x-sci-", b"x-joulegate-")


def _relayed(name: bytes) -> bool:
    """Whether a backend's response header goes on to the client."""
    lower = name.lower()
    return lower not in _DROP_RESPONSE and not lower.startswith(_OWNED_RESPONSE_PREFIXES)


async def send_json(
    send: Send, status: int, obj: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send ``obj`` as a whole JSON response."""
    body = _encode(obj)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, err: ProxyError, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send an OpenAI-style error as the whole response."""
    own = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send_json(send, err.status, err.to_json(), [*own, *extra])


def internal_error(exc: BaseException, doing: str) -> InternalError:
    """joulegate's own failure, as the client sees it (no internals in the message)."""
    return InternalError(
        f"joulegate failed while {doing} the request ({type(exc).__name__})",
        code="internal_error",
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(slots=True)
class _Hold:
    """Bytes of one request's body counted against ``max_queued_bytes``."""

    nbytes: int


@dataclass(slots=True)
class _Relay:
    """What the forwarding task hands back to the finishing step."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    streaming: str = ""
    """How the answer is relayed while it arrives: ``sse``, ``ndjson``, ``raw``, or
    empty when it is read whole (JSON, or any body of known length)."""
    started: bool = False
    """Response headers already sent to the client (streams)."""
    held: tuple[Any, Any] | None = None
    """A stream's last data event (event, parsed object), held to carry ``energy``."""
    tail: bytes = b""
    """Bytes to send after the held event (``[DONE]``)."""
    error_event: bytes = b""


class _ClientStalled(Exception):
    """The client took nothing of its answer for ``write_timeout_s``."""


class Forwarder:
    """The ASGI app mounted at ``/v1`` (and ``/api``) that proxies to the backend."""

    def __init__(
        self,
        settings: Settings,
        transport: BackendTransport,
        gate: Gate,
        pipeline: Pipeline,
        router: BackendRouter,
        *,
        strip_client_auth: bool = False,
    ) -> None:
        self._s = settings
        self._transport = transport
        self._held_bytes = 0
        """Bytes of request bodies being read or waiting in the queue."""
        self._gate = gate
        self._pipeline = pipeline
        self._router = router
        self._strip_auth = strip_client_auth or bool(settings.backend_api_key)
        self._gated = INFERENCE_PATHS | frozenset(settings.gated_paths)
        self._mounts = frozenset({"/v1", "/api"} if settings.ollama_native else {"/v1"})
        if settings.ollama_native:
            self._gated |= OLLAMA_INFERENCE_PATHS
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
            path = canonical_path(path_b, self._mounts)
        except ProxyError as err:
            await send_error(send, err, [(b"x-queue-ms", b"0.0")])
            return
        if method not in _FORWARDED_METHODS:
            await self._answer_method(send, method, path)
            return
        gated = method == "POST" and path in self._gated
        try:
            body = await self._read_body(scope, receive)
        except ProxyError as err:
            await send_error(send, err, [(b"x-queue-ms", b"0.0")])
            return
        # A gated body stays counted against max_queued_bytes until it is admitted.
        hold = _Hold(len(body))
        if not gated:
            self._let_go(hold)
        try:
            await self._handle(scope, receive, send, window, method, path, query, body, hold)
        finally:
            self._let_go(hold)

    async def _to_client(self, send: Send, message: Any) -> None:
        """Send to the client; one that reads nothing for ``write_timeout_s`` (its
        socket buffer full) loses the answer instead of holding the slot forever."""
        try:
            async with asyncio.timeout(self._s.write_timeout_s):
                await send(message)
        except TimeoutError:
            raise _ClientStalled from None

    async def _send_body(self, send: Send, data: bytes) -> None:
        await self._to_client(send, {"type": "http.response.body", "body": data, "more_body": True})

    def _let_go(self, hold: _Hold) -> None:
        self._held_bytes -= hold.nbytes
        hold.nbytes = 0

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
        hold: _Hold,
    ) -> None:
        gated = method == "POST" and path in self._gated
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            parsed = self._parse(body, path) if gated else None
            task = request_task(headers, parsed) if gated else None
        except ProxyError as err:
            await send_error(send, err, [(b"x-queue-ms", b"0.0")])
            return
        ex = Exchange(
            request_id=uuid.uuid4().hex,
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
            body = self._maybe_ask_usage(ex, parsed, body)
        # Identify the caller (and check budgets) before anything else: an unknown
        # key learns nothing, not even which models exist.
        try:
            await self._pipeline.arrival(ex)
            backend = self._pick_backend(ex)
        except Exception as exc:
            if isinstance(exc, ProxyError):
                refusal = exc
            else:
                log.exception("a stage failed on arrival of %s %s", method, path)
                refusal = internal_error(exc, "admitting")
            ex.status = refusal.status
            ex.failure = refusal.error_type
            ex.window.finished_s = time.monotonic()
            await send_error(send, refusal, [(b"x-queue-ms", b"0.0"), _request_id(ex)])
            await self._pipeline.refused(ex)
            return
        if backend is None:  # GET /v1/models with several backends: joulegate answers
            ex.status = 200
            ex.window.finished_s = time.monotonic()
            try:
                await send_json(send, 200, self._router.models_json(), [_request_id(ex)])
            finally:
                await self._pipeline.closed(ex)
            return
        ex.backend, ex.backend_url = backend.name, backend.url
        await self._serve(ex, backend, scope, receive, send, method, path, query, body)

    @staticmethod
    async def _answer_method(send: Send, method: str, path: str) -> None:
        """HEAD and OPTIONS are answered here; any other method is 405 (never forwarded:
        TRACE would echo the request, headers and keys included, back)."""
        if method in ("HEAD", "OPTIONS"):
            status = 200 if method == "HEAD" else 204
            headers = [_ALLOW, (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        err = MethodNotAllowed(
            f"Invalid method for URL ({method} {path}): joulegate forwards GET, POST and DELETE",
            code="method_not_allowed",
        )
        await send_error(send, err, [_ALLOW])

    def _pick_backend(self, ex: Exchange) -> Backend | None:
        """The backend for this request; None when joulegate answers it itself."""
        router = self._router
        if ex.gated:
            return router.route(ex.model_requested)
        if router.single:
            return router.backends[0]
        if ex.method == "GET" and ex.endpoint == "models":
            return None
        if ex.endpoint.startswith("models/"):
            return router.for_path_model(ex.endpoint.removeprefix("models/"))
        return router.backends[0]

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._s.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise PayloadTooLarge(
                    f"request body is larger than {limit} bytes (max_body_bytes)",
                    code="request_too_large",
                )
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise BadRequest("client disconnected while sending the body")
                chunk: bytes = msg.get("body", b"")  # type: ignore[assignment]
                size += len(chunk)
                self._held_bytes += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"request body is larger than {limit} bytes (max_body_bytes)",
                        code="request_too_large",
                    )
                if self._held_bytes > self._s.max_queued_bytes:
                    raise QueueFull(
                        f"joulegate holds {self._s.max_queued_bytes} bytes of queued request "
                        "bodies (max_queued_bytes); retry later",
                        code="queue_full",
                        headers={"retry-after": "1"},
                    )
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return b"".join(chunks)
        except BaseException:
            self._held_bytes -= size
            raise

    @staticmethod
    def _parse(body: bytes, path: str) -> dict[str, Any] | None:
        if not body.strip():
            raise BadRequest(f"the body of {path} must be a JSON object", code="invalid_json")
        try:
            parsed = _decode(body)
        except RecursionError:
            raise BadRequest(
                f"the JSON body of {path} is nested too deeply", code="invalid_json"
            ) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(
                f"could not parse the JSON body of {path}: {exc}", code="invalid_json"
            ) from None
        if not isinstance(parsed, dict):
            raise BadRequest(f"the body of {path} must be a JSON object", code="invalid_json")
        opts = parsed.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise BadRequest(
                "stream_options must be an object", param="stream_options", code="invalid_type"
            )
        return parsed

    def _maybe_ask_usage(self, ex: Exchange, parsed: dict[str, Any], body: bytes) -> bytes:
        """Ask the backend for a stream's token usage; the extra chunk is stripped later."""
        if not (
            self._s.stream_usage
            and ex.stream
            and ex.endpoint in ("chat/completions", "completions")
        ):
            return body
        opts = parsed.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage") is True:
            return body
        new_opts = dict(opts) if isinstance(opts, dict) else {}
        new_opts["include_usage"] = True
        ex.usage_injected = True
        return _encode({**parsed, "stream_options": new_opts})

    def _forward_headers(self, scope: Scope) -> list[tuple[str, str]]:
        out = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in _DROP_REQUEST and not (self._strip_auth and k == b"authorization")
        ]
        if self._auth_header is not None:
            out.append(self._auth_header)
        out.append(("accept-encoding", "identity"))
        return out

    async def _serve(
        self,
        ex: Exchange,
        backend: Backend,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        path: str,
        query: bytes,
        body: bytes,
    ) -> None:
        url = backend.url + path + ("?" + query.decode("latin-1") if query else "")
        request = Outgoing(method, url, self._forward_headers(scope), body, ex.gated)
        relay = _Relay()
        error: ProxyError | None = None
        work = asyncio.ensure_future(self._forward(ex, request, backend, relay, send))
        # Every forwarded request, gated or not, lets go of its backend connection (and
        # its slot) the moment its client leaves.
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                ex.failure = "client_disconnected"
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            else:
                watcher.cancel()
                work.result()
        except _ClientStalled:
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
            await self._finish(ex, relay, error, send)

    async def _forward(
        self, ex: Exchange, out: Outgoing, backend: Backend, relay: _Relay, send: Send
    ) -> None:
        if ex.gated:
            try:
                await self._gate.acquire(ex.window)
            finally:
                self._let_go(ex.scratch["_hold"])
            await self._pipeline.admitted(ex)
        else:
            ex.window.admitted_s = time.monotonic()
        if ex.backend_headers:
            extra = {k.lower() for k in ex.backend_headers}
            out.headers = [(k, v) for k, v in out.headers if k not in extra]
            out.headers += [(k.lower(), v) for k, v in ex.backend_headers.items()]
        where = backend.url
        try:
            response = await self._transport.send(out, where)
        except BackendUnreachable as err:
            self._router.mark(backend, up=False, error=str(err.__cause__ or err))
            raise
        self._router.mark(backend, up=True)
        ex.window.first_byte_s = time.monotonic()
        ex.status = relay.status = response.status
        relay.headers = [(k, v) for k, v in response.raw_headers if _relayed(k)]
        ctype = response.headers.get("content-type", "")
        parsed = ctype.startswith(("text/event-stream", "application/x-ndjson"))
        parsed = parsed or (ex.gated and ctype.startswith("application/json"))
        # joulegate asks for identity; a backend that compresses anyway is decoded for
        # parsing (and the client gets the decoded body) so nothing is lost silently.
        decoder = _decoder(response.headers.get("content-encoding", "")) if parsed else None
        if decoder is not None:
            relay.headers = [(k, v) for k, v in relay.headers if k.lower() != b"content-encoding"]
        complete = False
        try:
            if ctype.startswith("text/event-stream"):
                relay.streaming = "sse"
                await self._relay_stream(ex, _chunks(response, decoder), relay, send)
            elif ctype.startswith("application/x-ndjson"):
                relay.streaming = "ndjson"  # Ollama's native streams
                await self._relay_lines(ex, _chunks(response, decoder), relay, send)
            elif ctype.startswith("application/json") or response.content_length is not None:
                relay.body = await response.read()
                if decoder is not None:
                    relay.body = _decompress(decoder, relay.body, where)
                if ex.gated and ctype.startswith("application/json"):
                    if len(relay.body) <= self._s.max_parsed_answer_bytes:
                        self._note_json(ex, relay)
                    else:  # parsing would take several times its size in memory
                        log.info(
                            "answer of %d bytes relayed unparsed (max_parsed_answer_bytes)",
                            len(relay.body),
                        )
            else:  # anything else of unknown length (audio, …) streams through as it is
                relay.streaming = "raw"
                await self._start_stream(ex, relay, send)
                async for chunk in response.content.iter_any():
                    await self._send_body(send, chunk)
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

    def _note_json(self, ex: Exchange, relay: _Relay) -> None:
        try:
            obj = _decode(relay.body)
        except msgspec.DecodeError:
            return
        if isinstance(obj, dict):
            relay.held = (None, obj)
            _note_chunk(ex, obj, self._pipeline.wants_content)

    async def _start_stream(self, ex: Exchange, relay: _Relay, send: Send) -> None:
        await self._to_client(
            send,
            {
                "type": "http.response.start",
                "status": relay.status,
                "headers": [
                    *relay.headers,
                    (b"x-queue-ms", _fmt(ex.window.queue_s * 1000)),
                    _request_id(ex),
                    *((k.encode(), v.encode()) for k, v in ex.response_headers.items()),
                ],
            },
        )
        relay.started = True

    async def _relay_lines(
        self, ex: Exchange, chunks: AsyncIterator[bytes], relay: _Relay, send: Send
    ) -> None:
        """NDJSON, line by line; the final ``"done": true`` line is held for ``energy``."""
        await self._start_stream(ex, relay, send)
        buf = b""
        async for chunk in chunks:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    obj = _decode(line)
                except msgspec.DecodeError:
                    obj = None
                if isinstance(obj, dict):
                    _note_chunk(ex, obj, self._pipeline.wants_content)
                    if obj.get("done") is True:
                        relay.held = (None, obj)
                        continue
                await self._send_body(send, line + b"\n")
        relay.tail = buf

    async def _relay_stream(
        self, ex: Exchange, chunks: AsyncIterator[bytes], relay: _Relay, send: Send
    ) -> None:
        await self._start_stream(ex, relay, send)
        splitter = EventSplitter()
        collect = self._pipeline.wants_content
        async for chunk in chunks:
            for event in splitter.feed(chunk):
                if event.data is None:
                    await self._send_body(send, event.raw)
                    continue
                if event.data == b"[DONE]":
                    relay.tail = event.raw
                    return
                obj = event.decoded()
                if not isinstance(obj, dict):
                    await self._send_body(send, event.raw)
                    continue
                if obj.get("type") in _RESPONSES_FINAL:
                    # The Responses API's last event: energy rides in its response.
                    _note_chunk(ex, obj, collect)
                    if relay.held is not None:
                        await self._send_body(send, relay.held[0].raw)
                    relay.held = (event, obj)
                    continue
                if obj.get("type") == "response.output_text.delta":
                    ex.stream_content_chunks += 1
                has_text, has_finish = _note_chunk(ex, obj, collect)
                if has_text:
                    ex.stream_content_chunks += 1
                if obj.get("choices") == [] and obj.get("usage") is not None:
                    if ex.usage_injected:
                        continue  # the client did not ask for it
                elif not has_finish:
                    if relay.held is not None:
                        await self._send_body(send, relay.held[0].raw)
                        relay.held = None
                    await self._send_body(send, event.raw)
                    continue
                if relay.held is not None:
                    await self._send_body(send, relay.held[0].raw)
                relay.held = (event, obj)
        rest = splitter.rest()
        if rest:
            relay.tail = rest

    async def _finish(
        self, ex: Exchange, relay: _Relay, error: ProxyError | None, send: Send
    ) -> None:
        w = ex.window
        if ex.completion_tokens is None and ex.stream_content_chunks:
            # The backend sent no usage (llama.cpp's server ignores include_usage):
            # count content chunks, one token each on servers that stream per token.
            ex.completion_tokens = ex.stream_content_chunks
            ex.completion_tokens_counted = True
        ex.energy.update(
            {
                "queue_ms": _ms(w.queue_s),
                "thermal_wait_ms": _ms(w.thermal_wait_s),
                "duration_ms": _ms(w.duration_s),
            }
        )
        try:
            await self._pipeline.finished(ex)
        finally:
            if ex.gated and w.admitted_s is not None:
                self._gate.release(w.duration_s)
        try:
            if ex.failure in ("client_disconnected", "client_stalled"):
                return
            if relay.started:
                await self._finish_stream(ex, relay, error, send)
            elif error is not None:
                await send_error(send, error, self._timing_headers(ex))
            else:
                await self._finish_whole(ex, relay, send)
        except _ClientStalled:
            # Recorded already; the client stopped reading its very last bytes.
            log.info("client stalled on the end of %s %s", ex.method, ex.path)
        finally:
            await self._pipeline.closed(ex)

    def _timing_headers(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        out = [(b"x-queue-ms", _fmt(ex.window.queue_s * 1000)), _request_id(ex)]
        if ex.window.duration_s is not None:
            out.append((b"x-duration-ms", _fmt(ex.window.duration_s * 1000)))
        return out

    async def _finish_whole(self, ex: Exchange, relay: _Relay, send: Send) -> None:
        body = relay.body
        if relay.held is not None and 200 <= relay.status < 300:
            obj = relay.held[1]
            _put_energy(obj, ex.energy)
            body = _encode(obj)
        headers = relay.headers + self._timing_headers(ex)
        headers += [(k.encode(), v.encode()) for k, v in ex.response_headers.items()]
        headers.append((b"content-length", str(len(body)).encode()))
        start = {"type": "http.response.start", "status": relay.status, "headers": headers}
        await self._to_client(send, start)
        await self._to_client(send, {"type": "http.response.body", "body": body})

    async def _finish_stream(
        self, ex: Exchange, relay: _Relay, error: ProxyError | None, send: Send
    ) -> None:
        out = b""
        if relay.streaming == "ndjson":
            if relay.held is not None:
                out += _encode({**relay.held[1], "energy": ex.energy}) + b"\n"
            if error is not None:
                out += _encode({"error": error.message}) + b"\n"  # Ollama's error shape
            else:
                out += relay.tail
        elif relay.streaming == "sse":
            if relay.held is not None:
                event, obj = relay.held
                _put_energy(obj, ex.energy)
                out += event.with_data(obj)
            if error is not None:
                out += b"data: " + _encode(error.to_json()) + b"\n\n"
            else:
                out += relay.tail
        await self._to_client(send, {"type": "http.response.body", "body": out})


def _note_chunk(ex: Exchange, obj: dict[str, Any], collect: bool = False) -> tuple[bool, bool]:
    """Pick what stages need from a response object or stream chunk, in one pass.

    Returns whether any choice carried text and whether any carried a finish reason
    (what the stream relay decides on).
    """
    if isinstance(obj.get("response"), dict) and isinstance(obj.get("type"), str):
        _note_response_event(ex, obj["type"], obj["response"])
        return False, False
    if ex.response_id is None and isinstance(obj.get("id"), str):
        ex.response_id = obj["id"]
    if isinstance(obj.get("model"), str):
        ex.model_served = obj["model"]
    if isinstance(obj.get("eval_count"), int):  # Ollama's native answers
        ex.completion_tokens = obj["eval_count"]
        if isinstance(obj.get("prompt_eval_count"), int):
            ex.prompt_tokens = obj["prompt_eval_count"]
    if isinstance(obj.get("done_reason"), str) and obj["done_reason"]:
        ex.finish_reasons.append(obj["done_reason"])
    if obj.get("object") == "response":  # a whole Responses API answer
        _note_response_event(ex, "", obj)
    if collect:
        message = obj.get("message")
        piece = message.get("content") if isinstance(message, dict) else obj.get("response")
        if isinstance(piece, str) and piece:
            ex.response_text = (ex.response_text or "") + piece
    _note_usage(ex, obj.get("usage"))
    has_text = has_finish = False
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if not isinstance(c, dict):
                continue
            reason = c.get("finish_reason")
            if isinstance(reason, str) and reason:
                ex.finish_reasons.append(reason)
                has_finish = True
            piece = _text_of(c)
            if piece:
                has_text = True
                if collect:
                    ex.response_text = (ex.response_text or "") + piece
    return has_text, has_finish


_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _put_energy(obj: dict[str, Any], energy: dict[str, Any]) -> None:
    """Set (replace, never merge into) ``energy`` where a client reads it: in the
    ``response`` of a Responses stream's last event, else at the top."""
    inner = obj.get("response")
    if obj.get("type") in _RESPONSES_FINAL and isinstance(inner, dict):
        inner["energy"] = energy
    else:
        obj["energy"] = energy


def _note_usage(ex: Exchange, usage: Any) -> None:
    """Token counts in OpenAI's chat (prompt/completion) or Responses (input/output) names."""
    if not isinstance(usage, dict):
        return
    for name, attr in (
        ("prompt_tokens", "prompt_tokens"),
        ("input_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"),
        ("output_tokens", "completion_tokens"),
    ):
        if isinstance(usage.get(name), int):
            setattr(ex, attr, usage[name])


def _note_response_event(ex: Exchange, kind: str, response: dict[str, Any]) -> None:
    """A Responses API object: whole, or inside a stream's ``response.*`` event."""
    if ex.response_id is None and isinstance(response.get("id"), str):
        ex.response_id = response["id"]
    if isinstance(response.get("model"), str):
        ex.model_served = response["model"]
    _note_usage(ex, response.get("usage"))
    status = response.get("status")
    # "completed", "incomplete" or "failed": the Responses API's finish reason.
    if kind in ("", "response.completed", "response.incomplete", "response.failed") and (
        isinstance(status, str) and status not in ("in_progress", "queued")
    ):
        ex.finish_reasons.append(status)


def _text_of(choice: dict[str, Any]) -> str | None:
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else None


def _decoder(encoding: str) -> Any:
    """A zlib decoder for a gzip or deflate body; None for identity (or what we cannot
    decode, which then passes through as the backend sent it)."""
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    if enc not in ("", "identity"):
        log.warning("backend answer in %r encoding: relayed as is, not parsed", enc)
    return None


def _decompress(decoder: Any, data: bytes, where: str) -> bytes:
    try:
        return bytes(decoder.decompress(data))
    except zlib.error as exc:
        raise BackendUnreachable(
            f"the backend at {where} sent a body that does not decompress: {exc}",
            code="backend_bad_encoding",
        ) from None


async def _chunks(response: aiohttp.ClientResponse, decoder: Any) -> AsyncIterator[bytes]:
    """The body as it arrives, decoded when the backend compressed it."""
    where = str(response.url.origin())
    async for chunk in response.content.iter_any():
        yield _decompress(decoder, chunk, where) if decoder is not None else chunk


def _request_id(ex: Exchange) -> tuple[bytes, bytes]:
    """joulegate's own id of the request (the ledger's ``request_id``)."""
    return (b"x-request-id", ex.request_id.encode())


def _fmt(ms: float) -> bytes:
    return f"{ms:.1f}".encode()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
