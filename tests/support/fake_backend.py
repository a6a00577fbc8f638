"""An in-process fake OpenAI-compatible backend (raw ASGI) for tests and the benchmark.

Behaviour is steered per request by headers so one instance serves a whole test:

``x-fake-delay-ms``        sleep before answering
``x-fake-chunk-delay-ms``  sleep between stream chunks
``x-fake-status``          answer with this status and an OpenAI-style error body
``x-fake-hang``            never answer (for timeouts and disconnects)
``x-fake-hold``            wait until the test calls ``release()``
``x-fake-drop``            drop the connection mid-stream after N chunks
``x-fake-pad``             add N bytes to every streamed word (big chunks fill a
                           reader's buffers at once)
``x-fake-no-usage``        ignore ``stream_options.include_usage`` (as some servers do)
``x-fake-gzip``            gzip the answer whatever the request's accept-encoding says
``x-fake-response-id``     the ``id`` of the answer and its chunks (``chatcmpl-fake``)
``x-fake-usage``           this JSON object as the chat answer's ``usage`` (absurd counts)
``x-fake-impostor``        answer with the headers and the ``energy`` field joulegate sets
                           (as another joulegate in front of a backend would)

It also answers llama-server's ``POST /tokenize`` and ``POST /apply-template``.

It records what a test needs: requests in arrival order, the headers and body
it saw, how many requests overlapped, and which were cancelled. joulegate's own
``GET /v1/models`` look-ups (``User-Agent: joulegate``, at start-up, refresh and
``/readyz``) are answered but only counted in ``listings``: ``seen`` holds what
clients' requests made it see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from proxy.backends import USER_AGENT
from tests.support.serving import read_body, serve


@dataclass
class Seen:
    """One request as the fake backend received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    started_s: float
    finished_s: float | None = None
    cancelled: bool = False

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class FakeBackend:
    """The fake server; ``await`` nothing, just mount it with ``serve``."""

    words: tuple[str, ...] = ("Hello", " there", ",", " friend", ".")
    models: tuple[str, ...] = ("fake-model",)
    """What ``GET /v1/models`` lists."""
    owned_by: str = "fake"
    """The ``owned_by`` of those entries (``llamacpp``, ``library``, ``vllm``: the
    software real servers name there)."""
    finish_reason: str = "length"
    """Why an answer with words ends (``stop`` for clients that refuse ``length``)."""
    tokenize_delay_s: float = 0.0
    """How long llama-server's ``POST /tokenize`` takes here (one token per
    whitespace-separated word; ``POST /apply-template`` writes each message as
    ``<|role|> content``)."""
    chunk_delay_s: float = 0.0
    """A sleep between stream chunks when ``x-fake-chunk-delay-ms`` gives none: a slow
    model, for callers that cannot send the header (the console's Playground)."""
    seen: list[Seen] = field(default_factory=list)
    listings: int = 0
    """joulegate's own model look-ups answered (not in ``seen``)."""
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    """Its base URL while :func:`serving` serves it."""
    _released: asyncio.Event | None = None

    def release(self) -> None:
        """Let every ``x-fake-hold`` request answer."""
        self._event().set()

    def _event(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen = Seen(
            scope["method"],
            scope["path"],
            scope["query_string"].decode(),
            headers,
            body,
            time.monotonic(),
        )
        if seen.path == "/v1/models" and headers.get("user-agent") == USER_AGENT:
            self.listings += 1
            await self._answer(seen, send)
            return
        self.seen.append(seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        done = False

        def finished() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= 1
                seen.finished_s = time.monotonic()

        async def answered(message: dict[str, Any]) -> None:
            # The answer is over for the client (joulegate) once its last byte is sent,
            # whatever this app still does after; a server's slot is free by then.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished()
            await send(message)

        # Like a real model server, stop generating when the client (joulegate) leaves.
        answer = asyncio.ensure_future(self._answer(seen, answered))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                seen.cancelled = True
                finished()  # the client has gone: its slot is free, whatever is left to undo
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)
            else:
                answer.result()
        finally:
            watch.cancel()
            finished()

    async def _answer(self, seen: Seen, send: Any) -> None:
        h = seen.headers
        if "x-fake-impostor" in h:
            send = _impostor(send)
        if "x-fake-gzip" in h:
            send = _gzipped(send)
        if "x-fake-hang" in h:
            await asyncio.sleep(3600)
        if "x-fake-hold" in h:
            await self._event().wait()
        if "x-fake-delay-ms" in h:
            await asyncio.sleep(float(h["x-fake-delay-ms"]) / 1000)
        if "x-fake-status" in h:
            status = int(h["x-fake-status"])
            err = {
                "error": {
                    "message": "fake backend error",
                    "type": "invalid_request_error",
                    "code": "fake",
                    "param": None,
                }
            }
            await _json(send, status, err)
            return
        if seen.path == "/fake/release":
            self.release()
            self._released = None
            await _json(send, 200, {"released": True})
            return
        if seen.path == "/v1/models":
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": self.owned_by}
                        for m in self.models
                    ],
                },
            )
            return
        if seen.path == "/v1/embeddings":
            req = seen.json()
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "model": req.get("model", "fake-model"),
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                },
            )
            return
        if seen.path == "/api/chat":
            await self._ollama_chat(seen, send)
            return
        if seen.path == "/apply-template":  # llama-server's chat template, as text
            messages = seen.json().get("messages", [])
            prompt = "".join(f"<|{m['role']}|> {m['content']}\n" for m in messages)
            await _json(send, 200, {"prompt": prompt})
            return
        if seen.path == "/tokenize":
            await asyncio.sleep(self.tokenize_delay_s)
            words = seen.json().get("content", "").split()
            await _json(send, 200, {"tokens": list(range(len(words)))})
            return
        if seen.path == "/v1/responses":
            await self._responses(seen, send)
            return
        if seen.path in ("/v1/chat/completions", "/v1/completions"):
            req = seen.json() if seen.body else {}
            n = int(req.get("max_tokens") or len(self.words))
            if req.get("stream"):
                await self._stream(seen, req, n, send)
            else:
                answer = self._completion(req, n, _response_id(seen))
                answer["usage"] = _usage(seen, answer["usage"])
                await _json(send, 200, answer)
            return
        await _json(
            send,
            404,
            {
                "error": {
                    "message": f"no route {seen.path}",
                    "type": "not_found",
                    "code": None,
                    "param": None,
                }
            },
        )

    async def _ollama_chat(self, seen: Seen, send: Any) -> None:
        """Ollama's native chat: NDJSON lines when streaming (the default), else JSON."""
        req = seen.json()
        n = int((req.get("options") or {}).get("num_predict") or len(self.words))
        model = req.get("model", "fake-model")
        done = {
            "model": model,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 7,
            "eval_count": n,
        }
        if req.get("stream") is False:
            text = "".join(self._text(n))
            await _json(send, 200, {**done, "message": {"role": "assistant", "content": text}})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        delay = float(seen.headers.get("x-fake-chunk-delay-ms", "0")) / 1000 or self.chunk_delay_s
        for word in self._text(n):
            if delay:
                await asyncio.sleep(delay)
            msg = {"model": model, "message": {"role": "assistant", "content": word}, "done": False}
            await _ollama_chunk(send, msg, more=True)
        await _ollama_chunk(send, done, more=False)

    async def _responses(self, seen: Seen, send: Any) -> None:
        """OpenAI's Responses API: a ``response`` object, or its typed SSE events."""
        req = seen.json()
        n = int(req.get("max_output_tokens") or len(self.words))
        words = self._text(n)
        done = {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1,
            "status": "completed" if n >= len(self.words) else "incomplete",
            "model": req.get("model", "fake-model"),
            "output": [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "".join(words), "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": 7,
                "output_tokens": n,
                "total_tokens": 7 + n,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
            "parallel_tool_calls": False,
            "tool_choice": "auto",
            "tools": [],
        }
        if not req.get("stream"):
            await _json(send, 200, done)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
        events += [
            {"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
             "content_index": 0, "delta": w, "sequence_number": i + 1}
            for i, w in enumerate(words)
        ]  # fmt: skip
        final = "response.completed" if done["status"] == "completed" else "response.incomplete"
        events.append({"type": final, "response": done, "sequence_number": n + 1})
        for e in events:
            data = f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _text(self, n: int) -> list[str]:
        return [self.words[i % len(self.words)] for i in range(n)]

    def _completion(self, req: dict[str, Any], n: int, response_id: str) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": 1,
            "model": req.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": self.finish_reason if n else "stop",
                    "message": {"role": "assistant", "content": "".join(self._text(n))},
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
        }

    async def _stream(self, seen: Seen, req: dict[str, Any], n: int, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        delay = float(seen.headers.get("x-fake-chunk-delay-ms", "0")) / 1000 or self.chunk_delay_s
        drop = int(seen.headers.get("x-fake-drop", "-1"))
        pad = "x" * int(seen.headers.get("x-fake-pad", "0"))
        model = req.get("model", "fake-model")
        response_id = _response_id(seen)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"

        await send(
            {
                "type": "http.response.body",
                "body": chunk({"role": "assistant"}, None),
                "more_body": True,
            }
        )
        for i, word in enumerate(self._text(n)):
            if i == drop:
                raise RuntimeError("fake backend dropped the stream")
            if delay:
                await asyncio.sleep(delay)
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk({"content": word + pad}, None),
                    "more_body": True,
                }
            )
        finish = chunk({}, self.finish_reason)
        await send({"type": "http.response.body", "body": finish, "more_body": True})
        if "x-fake-no-usage" not in seen.headers and (req.get("stream_options") or {}).get(
            "include_usage"
        ):
            usage = {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": _usage(
                    seen, {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
                ),
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(usage).encode() + b"\r\n\r\n",
                    "more_body": True,
                }
            )
        await send(
            {"type": "http.response.body", "body": b"data: [DONE]\r\n\r\n", "more_body": False}
        )


@contextlib.asynccontextmanager
async def serving(backend: FakeBackend) -> AsyncIterator[FakeBackend]:
    """Serve ``backend`` on loopback; its base URL is ``backend.url`` meanwhile."""
    async with serve(backend, lifespan="off") as url:
        backend.url = url
        yield backend


def _usage(seen: Seen, usage: dict[str, Any]) -> Any:
    """``x-fake-usage`` (a JSON object) if the request sent one, else ``usage``."""
    given = seen.headers.get("x-fake-usage")
    return usage if given is None else json.loads(given)


def _response_id(seen: Seen) -> str:
    return seen.headers.get("x-fake-response-id", "chatcmpl-fake")


async def _ollama_chunk(send: Any, obj: dict[str, Any], more: bool) -> None:
    line = json.dumps(obj).encode() + b"\n"
    await send({"type": "http.response.body", "body": line, "more_body": more})


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(send: Any, status: int, obj: Any) -> None:
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


IMPOSTOR_HEADERS = [
    (b"x-energy-j", b"0.0"),
    (b"X-Energy-Dynamic-J", b"0.0"),
    (b"x-energy-budget-remaining-wh", b"1e9"),
    (b"x-co2e-g", b"0.0"),
    (b"x-carbon-source", b"impostor"),
    (b"x-sci-g", b"0.0"),
    (b"x-power-w", b"0.0"),
    (b"x-queue-ms", b"0.0"),
    (b"x-duration-ms", b"0.0"),
    (b"x-thermal-wait-ms", b"0.0"),
    (b"x-joulegate-anything", b"impostor"),
]
IMPOSTOR_ENERGY = {"energy_j": 0.0, "impostor": True}


def _impostor(send: Any) -> Any:
    """Wrap ``send``: joulegate's own headers on the start, an ``energy`` field in
    every JSON object of the body (whole answers and each SSE data event)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message["headers"] if k != b"content-length"]
            message = {**message, "headers": [*kept, *IMPOSTOR_HEADERS]}
        elif message.get("body"):
            message = {**message, "body": _with_energy(message["body"])}
        await send(message)

    return wrapped


def _gzipped(send: Any) -> Any:
    """Wrap ``send``: one gzip stream over the whole body, flushed at every message
    (as a compressing server streams)."""
    gz = zlib.compressobj(wbits=31)

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message["headers"] if k != b"content-length"]
            message = {**message, "headers": [*kept, (b"content-encoding", b"gzip")]}
        else:
            body = gz.compress(message.get("body", b""))
            more = message.get("more_body", False)
            body += gz.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
            message = {**message, "body": body}
        await send(message)

    return wrapped


def _with_energy(body: bytes) -> bytes:
    def one(text: bytes) -> bytes:
        try:
            obj = json.loads(text)
        except ValueError:
            return text
        if not isinstance(obj, dict):
            return text
        return json.dumps({**obj, "energy": IMPOSTOR_ENERGY}).encode()

    if not body.startswith(b"data: "):
        return one(body)
    parts = re.split(rb"(\r?\n\r?\n)", body)  # events and their separators
    return b"".join(b"data: " + one(p[6:]) if p.startswith(b"data: ") else p for p in parts)
