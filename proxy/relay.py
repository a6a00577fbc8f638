"""The answer side: relaying the backend's answer to the client as it arrives.

Whole JSON answers (with ``energy`` added), SSE event by event (``energy`` in the last
data event), Ollama's NDJSON line by line, anything else byte for byte; compressed
answers decoded for parsing. Every send to the client is bounded by
``write_timeout_s``: a client that stops reading loses its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent

from config.errors import BackendUnreachable, ProxyError
from config.settings import Settings
from proxy.bounded import BoundedSend
from proxy.exchange import Exchange, Pipeline
from proxy.render import energy_object, figure_headers
from proxy.schema import RESPONSES_FINAL, note_chunk, note_plain_chunk, put_energy
from proxy.sse import Event, EventSplitter
from proxy.wire import decode_json, encode_json, fmt_ms, request_id_header

log = logging.getLogger("joulegate.proxy")


@dataclass(slots=True)
class RelayState:
    """How one answer is being relayed: what the forwarding task hands the finishing step."""

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


class Relayer:
    """Sends the backend's answer on to the client, in the shape it arrives in.

    Every ``send`` is a :class:`~proxy.bounded.BoundedSend`: a client that reads nothing
    for ``write_timeout_s`` (its socket buffer full) loses the answer instead of holding
    the slot forever (``ClientStalled``). It is called directly, not through a helper: a
    20-chunk stream would pay a coroutine per level per chunk.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._s = settings
        self._pipeline = pipeline
        # When each token arrived matters only for sharing overlapping windows.
        self._note_tokens = settings.shared_windows

    async def start_stream(self, ex: Exchange, relay: RelayState, send: BoundedSend) -> None:
        """Send the status and headers of a streamed answer (energy comes in the body)."""
        await send(
            {
                "type": "http.response.start",
                "status": relay.status,
                "headers": [
                    *relay.headers,
                    (b"x-queue-ms", fmt_ms(ex.window.queue_s * 1000)),
                    request_id_header(ex),
                    *((k.encode(), v.encode()) for k, v in ex.response_headers.items()),
                ],
            },
        )
        relay.started = True

    async def relay_raw(
        self, ex: Exchange, chunks: AsyncIterator[bytes], relay: RelayState, send: BoundedSend
    ) -> None:
        """Anything else of unknown length (audio, …), byte for byte as it arrives."""
        await self.start_stream(ex, relay, send)
        async for chunk in chunks:
            await send(_piece(chunk))

    async def relay_lines(
        self, ex: Exchange, chunks: AsyncIterator[bytes], relay: RelayState, send: BoundedSend
    ) -> None:
        """NDJSON, line by line; the final ``"done": true`` line is held for ``energy``.

        The lines completed by one backend read go to the client in one write, as they
        arrived together (a write per line would cost a syscall each)."""
        await self.start_stream(ex, relay, send)
        buf = b""
        async for chunk in chunks:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out: list[bytes] = []
            for line in lines:
                try:
                    obj = decode_json(line)
                except msgspec.DecodeError:
                    obj = None
                if isinstance(obj, dict):
                    note_chunk(ex, obj, self._pipeline.wants_content)
                    if obj.get("done") is True:
                        relay.held = (None, obj)
                        continue
                    if self._note_tokens:  # Ollama streams a token a line
                        ex.token_events.append((time.monotonic(), 1))
                out.append(line + b"\n")
            if out:
                await send(_piece(b"".join(out)))
        relay.tail = buf

    async def relay_stream(
        self, ex: Exchange, chunks: AsyncIterator[bytes], relay: RelayState, send: BoundedSend
    ) -> None:
        """SSE, event by event; the event that ends the answer is held for ``energy``.

        The events completed by one backend read go to the client in one write, in
        order, as they arrived together (a write per event would cost a syscall each)."""
        await self.start_stream(ex, relay, send)
        splitter = EventSplitter()
        collect = self._pipeline.wants_content
        async for chunk in chunks:
            out: list[bytes] = []
            done = self._stream_events(ex, splitter.feed(chunk), relay, out, collect)
            if out:
                await send(_piece(b"".join(out)))
            if done:
                return
        rest = splitter.rest()
        if rest:
            relay.tail = rest

    def _stream_events(
        self,
        ex: Exchange,
        events: Iterable[Event],
        relay: RelayState,
        out: list[bytes],
        collect: bool,
    ) -> bool:
        """Note each event and put what the client gets now in ``out``, holding the one
        that ends the answer; True at ``[DONE]`` (kept as the tail)."""
        for event in events:
            if event.data is None:
                out.append(event.raw)
                continue
            if event.data == b"[DONE]":
                relay.tail = event.raw
                return True
            plain_text = note_plain_chunk(ex, event.data, collect)
            if plain_text is not None:  # the common mid-answer chunk
                if plain_text:
                    self._text_arrived(ex)
                _pass_on(relay, out, event)
                continue
            obj = event.decoded()
            if not isinstance(obj, dict):
                out.append(event.raw)
                continue
            if obj.get("type") in RESPONSES_FINAL:
                # The Responses API's last event: energy rides in its response.
                note_chunk(ex, obj, collect)
                _hold(relay, out, event, obj)
                continue
            if obj.get("type") == "response.output_text.delta":
                self._text_arrived(ex)
            has_text, has_finish = note_chunk(ex, obj, collect)
            if has_text:
                self._text_arrived(ex)
            if obj.get("choices") == [] and obj.get("usage") is not None:
                if ex.usage_injected:
                    continue  # the client did not ask for it
            elif not has_finish:
                _pass_on(relay, out, event)
                continue
            _hold(relay, out, event, obj)
        return False

    def _text_arrived(self, ex: Exchange) -> None:
        """One more chunk of text (a token, on servers that stream one per chunk)."""
        ex.stream_content_chunks += 1
        if self._note_tokens:
            ex.token_events.append((time.monotonic(), 1))

    def note_json(self, ex: Exchange, relay: RelayState) -> None:
        """Parse a whole JSON answer and hold it to carry ``energy``."""
        try:
            obj = decode_json(relay.body)
        except msgspec.DecodeError:
            return
        if isinstance(obj, dict):
            relay.held = (None, obj)
            note_chunk(ex, obj, self._pipeline.wants_content)

    def timing_headers(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        """``x-queue-ms``, ``x-request-id`` and, once known, ``x-duration-ms``."""
        out = [(b"x-queue-ms", fmt_ms(ex.window.queue_s * 1000)), request_id_header(ex)]
        if ex.window.duration_s is not None:
            out.append((b"x-duration-ms", fmt_ms(ex.window.duration_s * 1000)))
        return out

    async def finish_whole(self, ex: Exchange, relay: RelayState, send: BoundedSend) -> None:
        """Send a whole answer with its ``energy`` field and every figure as a header."""
        body = relay.body
        if relay.held is not None and 200 <= relay.status < 300:
            obj = relay.held[1]
            put_energy(obj, energy_object(ex))
            body = encode_json(obj)
        headers = relay.headers + self.timing_headers(ex)
        figures = figure_headers(ex) | ex.response_headers
        headers += [(k.encode(), v.encode()) for k, v in figures.items()]
        headers.append((b"content-length", str(len(body)).encode()))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": relay.status,
            "headers": headers,
        }
        await send(start)
        await ex.settled()
        await send(_last_piece(body))

    async def finish_stream(
        self, ex: Exchange, relay: RelayState, error: ProxyError | None, send: BoundedSend
    ) -> None:
        """The held last event with ``energy`` (or an error event), then the tail."""
        out = b""
        if relay.streaming == "ndjson":
            if relay.held is not None:
                out += encode_json({**relay.held[1], "energy": energy_object(ex)}) + b"\n"
            if error is not None:
                out += encode_json({"error": error.message}) + b"\n"  # Ollama's error shape
            else:
                out += relay.tail
        elif relay.streaming == "sse":
            if relay.held is not None:
                event, obj = relay.held
                put_energy(obj, energy_object(ex))
                out += event.with_data(obj)
            if error is not None:
                out += b"data: " + encode_json(error.to_json()) + b"\n\n"
            else:
                out += relay.tail
        await ex.settled()
        await send(_last_piece(out))


def _piece(data: bytes) -> HTTPResponseBodyEvent:
    """One more piece of a streamed body."""
    return {"type": "http.response.body", "body": data, "more_body": True}


def _last_piece(data: bytes) -> HTTPResponseBodyEvent:
    """The body's last piece (the last byte, that waits for the ledger's commit)."""
    return {"type": "http.response.body", "body": data, "more_body": False}


def _pass_on(relay: RelayState, out: list[bytes], event: Event) -> None:
    """Send ``event`` as it came, after any held one (it did not end the answer)."""
    if relay.held is not None:
        out.append(relay.held[0].raw)
        relay.held = None
    out.append(event.raw)


def _hold(relay: RelayState, out: list[bytes], event: Event, obj: Any) -> None:
    """Hold ``event`` as the one that may end the answer, sending any held before it."""
    if relay.held is not None:
        out.append(relay.held[0].raw)
    relay.held = (event, obj)


def decoder_for(encoding: str) -> Any:
    """A zlib decoder for a gzip or deflate body; None for identity (or what we cannot
    decode, which then passes through as the backend sent it)."""
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    if enc not in ("", "identity"):
        log.warning("backend answer in %r encoding: relayed as is, not parsed", enc)
    return None


DECODE_STEP = 64 * 1024
"""Most bytes one decompression step of a streamed answer makes: a gzip bomb is
decoded a piece at a time, each relayed (and its send awaited) before the next."""


def _bad_encoding(where: str, exc: zlib.error) -> BackendUnreachable:
    return BackendUnreachable(
        f"the backend at {where} sent a body that does not decompress: {exc}",
        code="backend_bad_encoding",
    )


def decompress_whole(data: bytes, limit: int, where: str) -> bytes | None:
    """A whole gzip or deflate body decoded, or None when it decodes to more than
    ``limit`` bytes (it is then relayed as it came): memory stays within ``limit``.
    Blocking: call it in a thread."""
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
    try:
        out = decoder.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _bad_encoding(where, exc) from None
    return None if len(out) > limit else bytes(out)


async def read_whole(
    response: aiohttp.ClientResponse,
    relay: RelayState,
    decoder: Any,
    encoding: list[tuple[bytes, bytes]],
    limit: int,
) -> bool:
    """Read a whole answer into ``relay.body``, decoded when ``decoder`` says it is
    compressed: in a thread (a gzip bomb never stalls the loop) and only up to ``limit``
    bytes. Past that the body stays as it came and its ``encoding`` header goes back
    into ``relay.headers``; returns True then (relay it unparsed)."""
    relay.body = await response.read()
    if decoder is None:
        return False
    where = str(response.url.origin())
    decoded = await asyncio.to_thread(decompress_whole, relay.body, limit, where)
    if decoded is None:
        relay.headers += encoding
        log.info("compressed answer decoding past %d bytes relayed as is", limit)
        return True
    relay.body = decoded
    return False


def body_chunks(response: aiohttp.ClientResponse, decoder: Any) -> AsyncIterator[bytes]:
    """The body as it arrives, decoded when the backend compressed it (aiohttp's own
    iterator when it did not: a generator around it costs a switch per read)."""
    if decoder is None:
        return response.content.iter_any()
    return _decoded(response, decoder)


async def _decoded(response: aiohttp.ClientResponse, decoder: Any) -> AsyncIterator[bytes]:
    where = str(response.url.origin())
    async for chunk in response.content.iter_any():
        data = chunk
        while data:
            try:
                out = decoder.decompress(data, DECODE_STEP)
            except zlib.error as exc:
                raise _bad_encoding(where, exc) from None
            data = decoder.unconsumed_tail
            if out:
                yield out
