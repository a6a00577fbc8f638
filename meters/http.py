"""HTTP for the whole-machine meters: one blocking client per meter, errors translated here.

A meter is polled up to ``external_hz`` times a second, for as many machines as
joulegate fronts (16 wall meters at 10 Hz: 160 polls a second). In the background
the :class:`~meters.poller.Poller` sends a :class:`Polled` meter's GET itself, over
a non-blocking connection of its own, and parses the answer with
:func:`parse_answer`; the meter only turns the answer into readings. Its blocking
reads (the probe at start-up, ``joulegate meters``, an ``https://`` endpoint) go
through a keep-alive connection (:class:`KeepAlive`), about a fifth of an
``httpx.Client``'s CPU per poll; tests and tools may pass an ``httpx.Client``
instead (a ``MockTransport``). Every blocking read is bounded by the timeout, on
connect and on each socket operation.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.parse
from abc import ABC, abstractmethod
from typing import Any

import httpx

from config.errors import MeterError
from meters.base import Reading

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest answer read from a meter (node_exporter's whole page fits many times)."""
_HEADERS = {"User-Agent": "joulegate", "Accept-Encoding": "identity"}


_Target = tuple[str, str, bytes, tuple[str, int]]


def request_for(url: str) -> _Target:
    """(scheme, host:port, a GET's bytes, the (host, port) to connect to) for ``url``."""
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in _HEADERS.items()
    )
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    return parts.scheme, parts.netloc, (head + "\r\n").encode("latin-1"), address


class KeepAlive:
    """One HTTP/1.1 keep-alive connection for one meter (reopened when it breaks).

    Plain ``http://`` is spoken over the socket directly (a GET and its answer, with
    ``Content-Length``, chunked, or up to the close): at 160 polls a second the
    standard library's header parsing alone costs more than the rest of a poll.
    ``https://`` goes through :mod:`http.client`."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._tls: http.client.HTTPSConnection | None = None
        self._origin = ""
        self._requests: dict[str, _Target] = {}
        self._address: tuple[str, int] = ("", 0)

    def _request(self, url: str) -> _Target:
        """(scheme, host:port, the request's bytes, the address) for ``url``, worked
        out once."""
        known = self._requests.get(url)
        if known is None:
            known = self._requests[url] = request_for(url)
        return known

    def get(self, url: str) -> tuple[int, bytes]:
        """GET ``url``: its status and body; a transport failure becomes MeterError."""
        scheme, netloc, request, address = self._request(url)
        if netloc != self._origin:
            self.close()
            self._origin, self._address = netloc, address
        for attempt in (1, 2):
            reused = self._sock is not None or self._tls is not None
            try:
                if scheme == "https":
                    return self._get_tls(netloc, request)
                return self._get_plain(netloc, request)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close()
                # A kept connection the meter closed meanwhile: once more on a new one.
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise MeterError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise MeterError(f"{url}: no answer")  # pragma: no cover - the loop returns or raises

    def _get_plain(self, netloc: str, request: bytes) -> tuple[int, bytes]:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self.timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self._sock
        sock.sendall(request)
        buf = bytearray()
        answer = None
        while answer is None:
            data = sock.recv(65536)
            buf += data
            if len(buf) > MAX_BODY_BYTES:
                raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
            answer = parse_answer(buf, eof=not data)
        status, body, close, _ = answer
        if close:
            self.close()
        return status, body

    def _get_tls(self, netloc: str, request: bytes) -> tuple[int, bytes]:
        if self._tls is None:
            self._tls = http.client.HTTPSConnection(netloc, timeout=self.timeout_s)
        target = request.split(b" ", 2)[1].decode("latin-1")
        self._tls.request("GET", target, headers=_HEADERS)
        response = self._tls.getresponse()
        body = response.read(MAX_BODY_BYTES)
        if response.will_close:
            self.close()
        return response.status, body

    def close(self) -> None:
        """Close the connection (the next read opens another)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tls is not None:
            self._tls.close()
            self._tls = None


Client = KeepAlive | httpx.Client
"""What a meter polls with."""


def new_client(timeout_s: float = 2.0) -> KeepAlive:
    """A client for polling a meter on the local network (no proxies from the environment)."""
    return KeepAlive(timeout_s)


def checked(url: str, status: int, body: bytes) -> bytes:
    """``body``, or MeterError when ``status`` is not 2xx."""
    if not 200 <= status < 300:
        raise MeterError(f"{url} answered {status}")
    return body


def get_body(client: Client, url: str) -> bytes:
    """GET ``url``'s body; any transport error or non-2xx status becomes MeterError."""
    if isinstance(client, KeepAlive):
        return checked(url, *client.get(url))
    try:
        response = client.get(url)
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise MeterError(f"{url} answered {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        raise MeterError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return response.content


def get_text(client: Client, url: str) -> str:
    """GET ``url``'s body as text; any transport error or non-2xx status becomes MeterError."""
    return get_body(client, url).decode("utf-8", errors="replace")


def json_of(url: str, body: bytes) -> Any:
    """The JSON in ``body``; a bad body becomes MeterError."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise MeterError(f"{url} did not answer JSON: {exc}") from exc


def get_json(client: Client, url: str) -> Any:
    """GET ``url`` and parse its JSON body; a bad body becomes MeterError."""
    return json_of(url, get_body(client, url))


class Polled(ABC):
    """A meter whose reading is one HTTP GET: :class:`~meters.poller.Poller` sends it
    on a connection of its own, with every other meter's, from one thread."""

    @abstractmethod
    def poll_url(self) -> str | None:
        """The ``http://`` URL to GET for a reading; None when the meter must be read
        with :meth:`~meters.base.Meter.read` (``https://``, a client passed in)."""

    @abstractmethod
    def poll_answer(self, status: int, body: bytes) -> dict[str, Reading]:
        """The readings in the answer to :meth:`poll_url`; MeterError when it has none."""


def pollable(client: Client, url: str) -> str | None:
    """``url`` when the poller can GET it itself (plain HTTP, the default client)."""
    return url if isinstance(client, KeepAlive) and url.startswith("http://") else None


_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:[ \t]*([^\r]*)")
"""The headers that frame an answer, in a lower-cased head."""

Answer = tuple[int, bytes, bool, int]
"""An answer parsed from a buffer: status, body, whether the server closes, bytes used."""


def parse_answer(buf: bytes | bytearray, eof: bool = False) -> Answer | None:
    """The first whole HTTP/1.1 answer in ``buf`` (``Content-Length``, chunked, or up
    to the close when ``eof``); None while it is incomplete; ValueError when malformed."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if eof:
            raise ValueError("the connection closed mid-answer")
        return None
    head = bytes(buf[:head_end]).lower()
    status = int(head.split(None, 2)[1])
    length: int | None = 0 if status in (204, 304) or status < 200 else None
    chunked = close = False
    for name, value in _FRAMING.findall(head):
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        else:
            close = b"close" in value
    pos = head_end + 4
    if chunked:
        return _dechunk(buf, pos, status, close, eof)
    if length is not None:
        if len(buf) < pos + length:
            return _short(eof)
        return status, bytes(buf[pos : pos + length]), close, pos + length
    return (status, bytes(buf[pos:]), True, len(buf)) if eof else None


def _dechunk(
    buf: bytes | bytearray, pos: int, status: int, close: bool, eof: bool
) -> Answer | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return _short(eof)
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return _short(eof)
        body += buf[pos : pos + size]
        pos += size + 2
    while (eol := buf.find(b"\r\n", pos)) != pos:  # trailers, up to the blank line
        if eol < 0:
            return _short(eof)
        pos = eol + 2
    return status, bytes(body), close, pos + 2


def _short(eof: bool) -> Answer | None:
    """None (wait for more), or ValueError when no more will come."""
    if eof:
        raise ValueError("the connection closed mid-answer")
    return None
