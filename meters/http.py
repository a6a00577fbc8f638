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
import urllib.parse
from typing import Any

import httpx

from config.errors import MeterError

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest answer read from a meter (node_exporter's whole page fits many times)."""
_HEADERS = {"User-Agent": "joulegate", "Accept-Encoding": "identity"}


class KeepAlive:
    """One HTTP/1.1 keep-alive connection (reopened when it breaks), for one meter."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._origin: tuple[str, str] = ("", "")

    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """The open connection to ``netloc`` (reused: True), or a new one."""
        if self._conn is not None and self._origin == (scheme, netloc):
            return self._conn, True
        self.close()
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        self._conn, self._origin = cls(netloc, timeout=self.timeout_s), (scheme, netloc)
        return self._conn, False

    def get(self, url: str) -> tuple[int, bytes]:
        """GET ``url``: its status and body; a transport failure becomes MeterError."""
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn, reused = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request("GET", target, headers=_HEADERS)
                response = conn.getresponse()
                body = response.read(MAX_BODY_BYTES)
                if response.will_close:
                    self.close()
                return response.status, body
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept connection the meter closed meanwhile: once more on a new one.
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise MeterError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise MeterError(f"{url}: no answer")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        """Close the connection (the next read opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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
