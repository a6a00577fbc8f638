"""Serving joulegate with uvicorn: one configuration, and bounds on what clients hold.

Connections that never finish a request head are closed after ``head_timeout_s``
(uvicorn arms no timer before a first request), a body that pauses longer than
``body_timeout_s`` is dropped, and at most ``max_client_connections`` are open: a new
one closes the oldest idle one, so 1,200 idle or slowloris connections cannot take
every file descriptor and lock a normal client out.

uvicorn's httptools protocol buffers a request's line and headers for as long as they
keep coming, without a limit: 40 connections each sending an unfinished 4 MiB header
took 167 MB here. :class:`BoundedHttpToolsProtocol` answers ``431`` and closes the
connection once the head of a request passes ``max_header_bytes``, whether it arrives
in pieces (counted as received) or in one read (counted as the parser reports it).

uvicorn also frames an answer of unknown length (a stream) as ``transfer-encoding:
chunked`` even to an HTTP/1.0 client, which cannot read it. For those clients the
protocol sends such answers close-delimited instead, as HTTP/1.0 expects.

And uvicorn writes an answer's head as soon as the app starts it, so a whole answer
reached the client in two writes (head, then body) and woke it twice;
:class:`HeadWithBody` holds the head of an answer of known length for its body and
writes both at once (-50 to -90 us p50 per whole answer in the overhead benchmark).
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import socket
import struct
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import Settings

log = logging.getLogger("joulegate.server")

FD_RESERVE = 128
"""Open files kept free beside the client connections: the listening socket, the ledger,
log files, and a margin; the backend connections are added to it."""


def _refusal(status: bytes, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer joulegate writes itself, OpenAI-shaped, closing."""
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": None}
    body = json.dumps({"error": error}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_TOO_LARGE = _refusal(
    b"431 Request Header Fields Too Large",
    "request line and headers are too large (max_header_bytes)",
    "request_header_fields_too_large",
)
_HEAD_TIMEOUT = _refusal(
    b"408 Request Timeout",
    "the request line and headers did not arrive in time (head_timeout_s)",
    "request_timeout",
)
_BUSY = _refusal(
    b"503 Service Unavailable",
    "joulegate has as many client connections as it takes, all busy (max_client_connections)",
    "too_many_connections",
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: stops parsing a head past ``max_header_bytes``."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on what a client may hold: the bytes
    before the body, the time to send them, the pauses inside a body, and how many
    connections are open at once."""

    max_header_bytes = 64 * 1024
    head_timeout_s = 10.0
    body_timeout_s = 30.0
    max_client_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        """Raw bytes received while a head was incomplete (a head still coming)."""
        self._parsed_head = 0
        """Bytes of the current head the parser has reported (a head read at once)."""
        self._refused_head = False
        self._timer: Any = None
        self._busy = False
        """A request is in progress (its head is complete and its answer is not)."""
        self._opened_s = 0.0

    # -- the connection cap and the head timer ----------------------------------------

    def connection_made(self, transport: Any) -> None:
        """Count the connection against ``max_client_connections``; time its first head."""
        super().connection_made(transport)
        self._opened_s = self.loop.time()
        if len(self.connections) > self.max_client_connections and not self._make_room():
            transport.write(_BUSY)
            transport.close()
            return
        self._arm(self.head_timeout_s, self._head_timed_out)

    def _make_room(self) -> bool:
        """Close the oldest idle connection (no request in progress) for this new one."""
        idle = [
            c
            for c in self.connections
            if isinstance(c, BoundedHttpToolsProtocol) and c is not self and not c._busy
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._opened_s)
        oldest.transport.close()
        oldest.connections.discard(oldest)  # gone now for the count, whatever close takes
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer with the connection."""
        self._arm(None, None)
        super().connection_lost(exc)

    def _arm(self, delay_s: float | None, then: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay_s is not None:
            self._timer = self.loop.call_later(delay_s, then)

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._busy and not self.transport.is_closing():
            self.transport.write(_HEAD_TIMEOUT)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.flow is not None and self.flow.read_paused:  # joulegate is not reading
            self._arm(self.body_timeout_s, self._body_timed_out)
            return
        self.transport.close()  # the app sees the client leave: 400, never forwarded

    def on_response_complete(self) -> None:
        """The answer is out: the next head (on a kept-alive connection) is timed anew."""
        self._busy = False
        super().on_response_complete()

    # -- the head's size, and the body's pauses ---------------------------------------

    def on_message_begin(self) -> None:
        """A new request: its head starts now."""
        self._in_head, self._head_bytes, self._parsed_head = True, 0, 0
        if self._timer is None:
            self._arm(self.head_timeout_s, self._head_timed_out)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Count the request line towards the head's limit."""
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header towards the head's limit, however the head was read."""
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, nbytes: int) -> None:
        self._parsed_head += nbytes
        if self._parsed_head > self.max_header_bytes:
            self._refused_head = True
            raise _HeadTooLarge  # the parser stops; uvicorn answers via send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a head it cannot parse; 431 for one past the limit."""
        if self._refused_head:
            self._refuse_head()
            return
        super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._arm(None, None)
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def on_headers_complete(self) -> None:
        """The head is complete: the body is not counted, but its pauses are timed."""
        self._in_head = False
        self._busy = True
        self._arm(None, None)
        super().on_headers_complete()
        if _has_body(self.headers):
            self._arm(self.body_timeout_s, self._body_timed_out)
        cycle = getattr(self, "cycle", None)
        if cycle is None or not hasattr(cycle, "chunked_encoding"):  # not uvicorn's own
            return
        if self.scope.get("http_version") == "1.0":
            _close_delimited(cycle)
        elif self.scope["method"] != "HEAD":  # uvicorn writes no body to a HEAD
            cycle.transport = HeadWithBody(cycle.transport, cycle)

    def on_body(self, body: bytes) -> None:
        """A piece of the body: the pause before the next one is timed from now."""
        if self._timer is not None:
            self._arm(self.body_timeout_s, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The whole body is in: nothing more is timed until the answer is out."""
        self._arm(None, None)
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that grows past the limit."""
        was_in_head = self._in_head or self._head_bytes == 0
        super().data_received(data)
        if not (was_in_head and self._in_head) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse_head()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request head announces a body (a length above 0, or chunks)."""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


class HeadWithBody:
    """The connection's transport as one answer's cycle sees it: the head of an answer of
    known length is held until the first piece of its body, and both go out in one write.

    uvicorn writes an answer's head the moment the app starts it, and a whole answer's
    body follows at once (joulegate's own once its ledger row is committed): the client
    got two packets and woke twice for one answer. An answer of unknown length (a
    stream) or without a body (``HEAD``, ``204``, ``304``) is written as it comes.
    """

    __slots__ = ("_cycle", "_head", "_head_seen", "_transport")

    def __init__(self, transport: Any, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        """Write ``data``, holding a head that a body will follow."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines((head, data))
            return
        cycle = self._cycle
        if not self._head_seen and cycle.response_started:
            self._head_seen = True  # this is the head: uvicorn writes it whole, at once
            if cycle.chunked_encoding is False and cycle.expected_content_length > 0:
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        """Close the connection; a head still held is dropped (its body never came).

        An answer cut short while its client reads nothing (a stalled reader dropped
        after ``write_timeout_s``: the write buffer is past its high-water mark) is
        reset: a graceful close would keep the unsent bytes (in joulegate's buffer, and
        in the kernel's, up to megabytes) until the client reads them or leaves, which
        a stalled client may never do."""
        self._head = None
        cycle = self._cycle
        unfinished = cycle.response_started and not cycle.response_complete
        if unfinished and cycle.flow.write_paused:
            reset(self._transport)
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def reset(transport: Any) -> None:
    """Drop a connection at once, with what is still unsent: a reset (``SO_LINGER`` 0)
    instead of a FIN queued behind bytes the client will never read."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _close_delimited(cycle: Any) -> None:
    """Make uvicorn write this answer's body as is, ended by closing the connection
    (HTTP/1.0 keeps no connection open), instead of chunked."""
    send = cycle.send
    cycle.chunked_encoding = False  # decided now: uvicorn never adds chunked framing
    cycle.expected_content_length = sys.maxsize

    async def framed(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            # The last piece: tell uvicorn that it completes the body.
            cycle.expected_content_length = len(message.get("body", b""))
        await send(message)

    cycle.send = framed


def client_connection_cap(settings: Settings) -> int:
    """``max_client_connections``, lowered so that the client connections, the backend
    connections and :data:`FD_RESERVE` fit in this process's open-files limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_client_connections
    backends = settings.max_connections + settings.max_slots * len(settings.backend_list)
    fits = max(8, soft - FD_RESERVE - backends)
    if fits < settings.max_client_connections:
        log.info(
            "at most %d client connections (max_client_connections %d, open files limit %d)",
            fits, settings.max_client_connections, soft,
        )  # fmt: skip
    return min(settings.max_client_connections, fits)


def raise_open_files_limit() -> None:
    """Raise this process's soft open-files limit to its hard limit (what a server
    that holds many connections should do at start-up; nginx's worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # some sandboxes refuse: keep the soft one
            log.info("could not raise the open files limit from %d: %s", soft, exc)


def http_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class for ``settings``: its head and body bounds and its cap on
    client connections (see :func:`client_connection_cap`)."""
    return type(
        "JoulegateHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "head_timeout_s": settings.head_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_client_connections": client_connection_cap(settings),
        },
    )
