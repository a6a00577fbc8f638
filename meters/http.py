"""HTTP for the whole-machine meters: one blocking client per meter, errors translated here.

A meter is polled up to ``external_hz`` times a second on its own thread, for as
many machines as joulegate fronts (16 wall meters at 10 Hz: 160 polls a second).
The default client is therefore a keep-alive connection of the standard library
(:class:`KeepAlive`), about a fifth of an ``httpx.Client``'s CPU per poll; tests and
tools may pass an ``httpx.Client`` instead (a ``MockTransport``). Every read is
bounded by the timeout, on connect and on each socket operation.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

import httpx

from config.errors import MeterError

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest answer read from a meter (node_exporter's whole page fits many times)."""
_HEADERS = {"User-Agent": "joulegate", "Accept-Encoding": "identity"}


_Target = tuple[str, str, bytes, tuple[str, int]]


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
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in _HEADERS.items()
            )
            default = 443 if parts.scheme == "https" else 80
            address = (parts.hostname or "", parts.port or default)
            known = (parts.scheme, parts.netloc, (head + "\r\n").encode("latin-1"), address)
            self._requests[url] = known
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
        reader = _Reader(sock)
        status_line = reader.line()
        status = int(status_line.split(None, 2)[1])
        length: int | None = None
        chunked = close = False
        while line := reader.line():
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = bytearray()
            while size := int(reader.line().split(b";", 1)[0], 16):
                body += reader.exactly(size)
                reader.line()
            while reader.line():  # trailers, up to the blank line
                pass
            out = bytes(body)
        elif length is not None:
            out = reader.exactly(length)
        else:
            out, close = reader.rest(), True
        if close:
            self.close()
        return status, out

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


class _Reader:
    """Buffered reads of one answer from a socket, bounded by :data:`MAX_BODY_BYTES`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._total = 0

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._total += len(data)
        if self._total > MAX_BODY_BYTES:
            raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
        self._buf += data
        return bool(data)

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        while (end := self._buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise ConnectionError("the meter closed the connection mid-answer")
        out = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return out

    def exactly(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        while len(self._buf) < n:
            if not self._fill():
                raise ConnectionError("the meter closed the connection mid-answer")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def rest(self) -> bytes:
        """Everything up to the close."""
        while self._fill():
            pass
        out = bytes(self._buf)
        self._buf.clear()
        return out


Client = KeepAlive | httpx.Client
"""What a meter polls with."""


def new_client(timeout_s: float = 2.0) -> KeepAlive:
    """A client for polling a meter on the local network (no proxies from the environment)."""
    return KeepAlive(timeout_s)


def get_text(client: Client, url: str) -> str:
    """GET ``url``'s body as text; any transport error or non-2xx status becomes MeterError."""
    if isinstance(client, KeepAlive):
        status, body = client.get(url)
        if not 200 <= status < 300:
            raise MeterError(f"{url} answered {status}")
        return body.decode("utf-8", errors="replace")
    try:
        response = client.get(url)
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise MeterError(f"{url} answered {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        raise MeterError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return response.text


def get_json(client: Client, url: str) -> Any:
    """GET ``url`` and parse its JSON body; a bad body becomes MeterError."""
    text = get_text(client, url)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MeterError(f"{url} did not answer JSON: {exc}") from exc
