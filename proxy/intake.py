"""The request side: which paths and methods, the body, and what joulegate adds.

Reading bodies under a shared byte bound, parsing inference bodies (400 without
touching the backend), asking for stream usage, and answering the methods joulegate
does not forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.types import Receive, Scope, Send

from config.errors import BadRequest, MethodNotAllowed, PayloadTooLarge, QueueFull
from config.settings import Settings
from proxy.exchange import Exchange
from proxy.wire import decode_json, encode_json

INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)
OLLAMA_INFERENCE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})


def gated_paths(settings: Settings) -> frozenset[str]:
    """The paths the forwarder queues and meters (POST to them)."""
    paths = INFERENCE_PATHS | frozenset(settings.gated_paths)
    return paths | OLLAMA_INFERENCE_PATHS if settings.ollama_native else paths


FORWARDED_METHODS = frozenset({"GET", "POST", "DELETE"})
"""What OpenAI-compatible APIs use; HEAD and OPTIONS joulegate answers itself."""
ALLOW = (b"allow", b"GET, POST, DELETE, HEAD, OPTIONS")
# Request headers never forwarded: hop-by-hop ones, and those aiohttp sets itself.
DROP_REQUEST = frozenset(
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
        # joulegate has read the whole body before it forwards (uvicorn answered the
        # client's 100-continue): passed on, a backend that never sends 100 Continue
        # held the request, and its gate slot, until read_timeout_s.
        b"expect",
    }
)


@dataclass(slots=True)
class Hold:
    """Bytes of one request's body counted against ``max_queued_bytes``."""

    nbytes: int


class BodyReader:
    """Reads request bodies, keeping every body being read or queued under
    ``max_queued_bytes`` (so queued requests cannot take unbounded memory)."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._held_bytes = 0
        """Bytes of request bodies being read or waiting in the queue."""

    async def read(self, scope: Scope, receive: Receive) -> bytes:
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
                self._check_held()
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return b"".join(chunks)
        except BaseException:
            self._held_bytes -= size
            raise

    def hold_parsed(self, hold: Hold, nbytes: int) -> None:
        """Count the parsed copy of a queued body too (its strings are a second copy:
        raw bytes alone undercounted what queued requests hold by 2-3x)."""
        self._held_bytes += nbytes
        hold.nbytes += nbytes
        self._check_held()

    def _check_held(self) -> None:
        if self._held_bytes > self._s.max_queued_bytes:
            raise QueueFull(
                f"joulegate holds {self._s.max_queued_bytes} bytes of queued request "
                "bodies (max_queued_bytes); retry later",
                code="queue_full",
                headers={"retry-after": "1"},
            )

    def let_go(self, hold: Hold) -> None:
        """Stop counting a body (it was admitted, or its request is over)."""
        self._held_bytes -= hold.nbytes
        hold.nbytes = 0


def forward_headers(
    scope: Scope, strip_auth: bool, auth_header: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """The client's headers as the backend gets them: hop-by-hop ones dropped, the
    client's key stripped when joulegate authenticates (or sends its own), and
    ``accept-encoding: identity`` so answers can be read as they stream."""
    out = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k not in DROP_REQUEST and not (strip_auth and k == b"authorization")
    ]
    if auth_header is not None:
        out.append(auth_header)
    out.append(("accept-encoding", "identity"))
    return out


def parse_body(body: bytes, path: str) -> dict[str, Any] | None:
    if not body.strip():
        raise BadRequest(f"the body of {path} must be a JSON object", code="invalid_json")
    try:
        parsed = decode_json(body)
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


def ask_usage(ex: Exchange, parsed: dict[str, Any], body: bytes, *, enabled: bool) -> bytes:
    """Ask the backend for a stream's token usage; the extra chunk is stripped later."""
    if not (enabled and ex.stream and ex.endpoint in ("chat/completions", "completions")):
        return body
    opts = parsed.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return body
    new_opts = dict(opts) if isinstance(opts, dict) else {}
    new_opts["include_usage"] = True
    ex.usage_injected = True
    return encode_json({**parsed, "stream_options": new_opts})


async def answer_method(send: Send, method: str) -> None:
    """Answer HEAD (200) and OPTIONS (204) here, with the methods joulegate forwards."""
    status = 200 if method == "HEAD" else 204
    headers = [ALLOW, (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def method_not_allowed(method: str, path: str) -> MethodNotAllowed:
    """The 405 for any other method (never forwarded: TRACE would echo the request,
    headers and keys included, back)."""
    return MethodNotAllowed(
        f"Invalid method for URL ({method} {path}): joulegate forwards GET, POST and DELETE",
        code="method_not_allowed",
        headers={"allow": ALLOW[1].decode()},
    )
