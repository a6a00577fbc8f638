"""A minimal fake OpenAI-compatible backend (raw ASGI) for the benchmarks.

bench/ keeps its own fake rather than borrowing the tests' one, so that the tests'
fake can grow without moving the benchmark's numbers. Its answers have the same
shapes and sizes as ``tests/support/fake_backend.py``'s: a chat completion of ``max_tokens``
words, or an SSE stream of one role chunk, ``max_tokens`` content chunks, a finish
chunk, the usage chunk when ``stream_options.include_usage`` asks for it, and
``[DONE]``.

Steered per request by headers:

``x-fake-delay-ms``       sleep before answering
``x-fake-hold``           wait until ``POST /fake/release``
``x-fake-content-bytes``  a non-streamed answer whose content is this many bytes
``x-fake-word-bytes``     a stream whose every content chunk says this many bytes
                          (fills a stalled client's socket buffers in fewer events)
``x-fake-token-interval-ms``  paced like a batching server: one decode step for every
                          request at once at this interval, a token each (a stream sends
                          it as it comes; a whole answer comes after its last step)
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

WORDS = ("Hello", " there", ",", " friend", ".")
MODELS = ("fake-model",)
_PIECE = 1024 * 1024
"""How much of a huge answer is sent per ASGI message."""

Scope = dict[str, Any]
Message = dict[str, Any]


class FakeBackend:
    """The fake server: mount it with uvicorn (no lifespan needed)."""

    def __init__(self) -> None:
        self._released: asyncio.Event | None = None
        self._pacers: dict[float, Pacer] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if path == "/fake/release":
            self._event().set()
            self._released = None
            await send_json(send, 200, {"released": True})
            return
        if "x-fake-hold" in headers:
            await self._event().wait()
        if "x-fake-delay-ms" in headers:
            await asyncio.sleep(float(headers["x-fake-delay-ms"]) / 1000)
        if path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
            await send_json(send, 200, {"object": "list", "data": data})
        elif path in ("/v1/chat/completions", "/v1/completions"):
            req = json.loads(body) if body else {}
            n = int(req.get("max_tokens") or len(WORDS))
            if "x-fake-token-interval-ms" in headers:
                interval_s = float(headers["x-fake-token-interval-ms"]) / 1000
                pacer = self._pacers.setdefault(interval_s, Pacer(interval_s))
                await _paced(send, req, n, pacer)
            elif req.get("stream"):
                await _stream(send, req, n, int(headers.get("x-fake-word-bytes", 0)))
            elif "x-fake-content-bytes" in headers:
                await _huge(send, req, int(headers["x-fake-content-bytes"]))
            else:
                await send_json(send, 200, completion(req, n, "".join(_text(n))))
        else:
            err = {"message": f"no route {path}", "type": "not_found", "code": None}
            await send_json(send, 404, {"error": {**err, "param": None}})

    def _event(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI request."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def send_json(send: Any, status: int, obj: Any) -> None:
    """Answer with ``obj`` as JSON."""
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def completion(req: dict[str, Any], n: int, content: str) -> dict[str, Any]:
    """A chat completion of ``n`` tokens saying ``content``."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": req.get("model", "fake-model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "length" if n else "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
    }


def _text(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


async def _huge(send: Any, req: dict[str, Any], size: int) -> None:
    """A completion whose content is ``size`` bytes, sent a MiB at a time (so the fake
    holds one copy of it, not a JSON encoder's several)."""
    head, _, tail = json.dumps(completion(req, 1, "\0")).encode().partition(b"\\u0000")
    body_bytes = len(head) + size + len(tail)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(body_bytes).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": head, "more_body": True})
    piece = b"x" * _PIECE
    for start in range(0, size, _PIECE):
        chunk = piece[: min(_PIECE, size - start)]
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> Message:
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return _sse(obj)


def _sse(obj: Any) -> Message:
    data = b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _stream(send: Any, req: dict[str, Any], n: int, word_bytes: int = 0) -> None:
    model = req.get("model", "fake-model")
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send(_chunk(model, {"role": "assistant"}, None))
    if word_bytes:
        big = _chunk(model, {"content": "x" * word_bytes}, None)
        for _ in range(n):
            await send(big)
    else:
        for word in _text(n):
            await send(_chunk(model, {"content": word}, None))
    await _finish_stream(send, req, model, n)


async def _finish_stream(send: Any, req: dict[str, Any], model: str, n: int) -> None:
    """The finish chunk, the usage chunk when asked for, and ``[DONE]``."""
    await send(_chunk(model, {}, "length"))
    if (req.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await send(_sse(obj))
    await send({"type": "http.response.body", "body": b"data: [DONE]\r\n\r\n", "more_body": False})


class Pacer:
    """A batching server's decode steps: every ``interval_s`` on a fixed schedule, each
    request waiting for a step gets its next token in that step."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._step: asyncio.Future[None] | None = None
        self._due = 0.0

    async def step(self) -> None:
        """Wait for the next decode step."""
        if self._step is None:
            loop = asyncio.get_running_loop()
            self._step = loop.create_future()
            # On schedule while busy; a server idle for a while starts a fresh one.
            self._due = max(self._due + self.interval_s, loop.time())
            loop.call_at(self._due, self._done)
        await self._step

    def _done(self) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.set_result(None)


@functools.lru_cache(maxsize=64)
def _paced_chunk(model: str, word: str) -> bytes:
    return bytes(_chunk(model, {"content": word}, None)["body"])


async def _paced(send: Any, req: dict[str, Any], n: int, pacer: Pacer) -> None:
    """A stream or whole answer of ``n`` tokens, one per decode step of ``pacer``."""
    model = req.get("model", "fake-model")
    if not req.get("stream"):
        for _ in range(n):
            await pacer.step()
        await send_json(send, 200, completion(req, n, "".join(_text(n))))
        return
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send(_chunk(model, {"role": "assistant"}, None))
    for word in _text(n):
        await pacer.step()
        body = _paced_chunk(model, word)
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await _finish_stream(send, req, model, n)
