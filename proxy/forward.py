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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import yarl
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from config.errors import (
    BackendTimeout,
    BackendUnreachable,
    BadRequest,
    InternalError,
    PayloadTooLarge,
    ProxyError,
)
from config.settings import Settings
from proxy.backends import Backend, BackendRouter
from proxy.exchange import Exchange, Pipeline
from proxy.gate import Gate, Window
from proxy.paths import canonical_path
from proxy.sse import EventSplitter
from proxy.task import request_task

log = logging.getLogger("joulegate.proxy")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)
OLLAMA_INFERENCE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
_USAGE_ENDPOINTS = ("chat/completions", "completions")
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
class _Outgoing:
    """The backend request, built once the slot is held (stages may add headers)."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    backend: Backend


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


class Forwarder:
    """The ASGI app mounted at ``/v1`` (and ``/api``) that proxies to the backend."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        gate: Gate,
        pipeline: Pipeline,
        router: BackendRouter,
        *,
        strip_client_auth: bool = False,
    ) -> None:
        self._s = settings
        self._session = session
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
        gated = method == "POST" and path in self._gated
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read_body(scope, receive)
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
        if parsed is not None:
            model = parsed.get("model")
            ex.model_requested = model if isinstance(model, str) else None
            ex.stream = parsed.get("stream") is True
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
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise BadRequest("client disconnected while sending the body")
            chunk: bytes = msg.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body is larger than {limit} bytes (max_body_bytes)",
                    code="request_too_large",
                )
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)

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
        request = _Outgoing(method, url, self._forward_headers(scope), body, backend)
        relay = _Relay()
        error: ProxyError | None = None
        work = asyncio.ensure_future(self._forward(ex, request, relay, send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive)) if ex.gated else None
        try:
            if watcher is None:
                await work
            else:
                await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    ex.failure = "client_disconnected"
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                else:
                    watcher.cancel()
                    work.result()
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
            if ex.status is None and ex.failure == "client_disconnected":
                ex.status = 499
            await self._finish(ex, relay, error, send)

    async def _forward(self, ex: Exchange, out: _Outgoing, relay: _Relay, send: Send) -> None:
        if ex.gated:
            await self._gate.acquire(ex.window)
            await self._pipeline.admitted(ex)
        else:
            ex.window.admitted_s = time.monotonic()
        headers = out.headers
        if ex.backend_headers:
            extra = {k.lower() for k in ex.backend_headers}
            headers = [(k, v) for k, v in headers if k not in extra]
            headers += [(k.lower(), v) for k, v in ex.backend_headers.items()]
        data = out.body if out.body or out.method not in ("GET", "HEAD") else None
        where = out.backend.url
        try:
            response = await self._session.request(
                out.method,
                yarl.URL(out.url, encoded=True),  # canonical already: no second normalising
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except TimeoutError as exc:
            raise BackendTimeout(
                f"the backend at {where} did not answer in time ({type(exc).__name__})",
                code="backend_timeout",
            ) from exc
        except aiohttp.ClientError as exc:
            self._router.mark(out.backend, up=False, error=f"{type(exc).__name__}: {exc}")
            raise BackendUnreachable(
                f"could not reach the backend at {where}: {exc or type(exc).__name__}",
                code="backend_unreachable",
            ) from exc
        self._router.mark(out.backend, up=True)
        ex.window.first_byte_s = time.monotonic()
        ex.status = relay.status = response.status
        relay.headers = [(k, v) for k, v in response.raw_headers if _relayed(k)]
        ctype = response.headers.get("content-type", "")
        complete = False
        try:
            if ctype.startswith("text/event-stream"):
                relay.streaming = "sse"
                await self._relay_stream(ex, response, relay, send)
            elif ctype.startswith("application/x-ndjson"):
                relay.streaming = "ndjson"  # Ollama's native streams
                await self._relay_lines(ex, response, relay, send)
            elif ctype.startswith("application/json") or response.content_length is not None:
                relay.body = await response.read()
                if ex.gated and ctype.startswith("application/json"):
                    self._note_json(ex, relay)
            else:  # anything else of unknown length (audio, …) streams through as it is
                relay.streaming = "raw"
                await self._start_stream(ex, relay, send)
                async for chunk in response.content.iter_any():
                    await _send_body(send, chunk)
            complete = True
        except TimeoutError as exc:
            raise BackendTimeout(
                f"the backend at {where} stopped answering (read timeout)",
                code="backend_timeout",
            ) from exc
        except aiohttp.ClientError as exc:
            raise BackendUnreachable(
                f"the backend at {where} broke the connection: {exc or type(exc).__name__}",
                code="backend_unreachable",
            ) from exc
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
        await send(
            {
                "type": "http.response.start",
                "status": relay.status,
                "headers": [
                    *relay.headers,
                    (b"x-queue-ms", _fmt(ex.window.queue_s * 1000)),
                    _request_id(ex),
                    *((k.encode(), v.encode()) for k, v in ex.response_headers.items()),
                ],
            }
        )
        relay.started = True

    async def _relay_lines(
        self, ex: Exchange, response: aiohttp.ClientResponse, relay: _Relay, send: Send
    ) -> None:
        """NDJSON, line by line; the final ``"done": true`` line is held for ``energy``."""
        await self._start_stream(ex, relay, send)
        buf = b""
        async for chunk in response.content.iter_any():
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
                await _send_body(send, line + b"\n")
        relay.tail = buf

    async def _relay_stream(
        self, ex: Exchange, response: aiohttp.ClientResponse, relay: _Relay, send: Send
    ) -> None:
        await self._start_stream(ex, relay, send)
        splitter = EventSplitter()
        collect = self._pipeline.wants_content
        async for chunk in response.content.iter_any():
            for event in splitter.feed(chunk):
                if event.data is None:
                    await _send_body(send, event.raw)
                    continue
                if event.data == b"[DONE]":
                    relay.tail = event.raw
                    return
                obj = event.decoded()
                if not isinstance(obj, dict):
                    await _send_body(send, event.raw)
                    continue
                has_text, has_finish = _note_chunk(ex, obj, collect)
                if has_text:
                    ex.stream_content_chunks += 1
                if obj.get("choices") == [] and obj.get("usage") is not None:
                    if ex.usage_injected:
                        continue  # the client did not ask for it
                elif not has_finish:
                    if relay.held is not None:
                        await _send_body(send, relay.held[0].raw)
                        relay.held = None
                    await _send_body(send, event.raw)
                    continue
                if relay.held is not None:
                    await _send_body(send, relay.held[0].raw)
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
            if ex.failure == "client_disconnected":
                return
            if relay.started:
                await self._finish_stream(ex, relay, error, send)
            elif error is not None:
                await send_error(send, error, self._timing_headers(ex))
            else:
                await self._finish_whole(ex, relay, send)
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
            obj["energy"] = ex.energy
            body = _encode(obj)
        headers = relay.headers + self._timing_headers(ex)
        headers += [(k.encode(), v.encode()) for k, v in ex.response_headers.items()]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": relay.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

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
                obj["energy"] = ex.energy
                out += event.with_data(obj)
            if error is not None:
                out += b"data: " + _encode(error.to_json()) + b"\n\n"
            else:
                out += relay.tail
        await send({"type": "http.response.body", "body": out, "more_body": False})


def _note_chunk(ex: Exchange, obj: dict[str, Any], collect: bool = False) -> tuple[bool, bool]:
    """Pick what stages need from a response object or stream chunk, in one pass.

    Returns whether any choice carried text and whether any carried a finish reason
    (what the stream relay decides on).
    """
    if ex.response_id is None and isinstance(obj.get("id"), str):
        ex.response_id = obj["id"]
    if isinstance(obj.get("model"), str):
        ex.model_served = obj["model"]
    if isinstance(obj.get("eval_count"), int):  # Ollama's native answers
        ex.completion_tokens = obj["eval_count"]
        if isinstance(obj.get("prompt_eval_count"), int):
            ex.prompt_tokens = obj["prompt_eval_count"]
    if collect:
        message = obj.get("message")
        piece = message.get("content") if isinstance(message, dict) else obj.get("response")
        if isinstance(piece, str) and piece:
            ex.response_text = (ex.response_text or "") + piece
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            ex.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            ex.completion_tokens = usage["completion_tokens"]
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


def _text_of(choice: dict[str, Any]) -> str | None:
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else None


def _request_id(ex: Exchange) -> tuple[bytes, bytes]:
    """joulegate's own id of the request (the ledger's ``request_id``)."""
    return (b"x-request-id", ex.request_id.encode())


def _fmt(ms: float) -> bytes:
    return f"{ms:.1f}".encode()


async def _send_body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
