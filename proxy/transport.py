"""The connections to the backends: two aiohttp pools and one error mapping.

aiohttp rather than httpx on the hot path: on the 2-core reference machine a loopback
round trip costs ~0.6 ms p50 with aiohttp and ~2.0 ms with httpx (bench numbers in
the README), which is the whole proxy overhead budget. httpx stays for everything
else (readiness, carbon, meters, model discovery).

Gated requests (inference) and everything else get separate pools, so a crowd of
slow ungated requests (model lists, files) can never hold the connections a gated
request needs: the gated pool is sized by ``max_concurrency``, the other by
``max_connections``. Waiting for a free connection is bounded by ``pool_timeout_s``
(504), and every aiohttp error becomes joulegate's own in :func:`backend_error`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
import yarl

from config.errors import BackendTimeout, BackendUnreachable, ProxyError
from config.settings import Settings


@dataclass(slots=True)
class Outgoing:
    """One backend request, built once the slot is held (stages may add headers)."""

    method: str
    url: str
    """Canonical already: sent as is, never normalised a second time."""
    headers: Sequence[tuple[str, str]]
    body: bytes
    gated: bool


class BackendTransport:
    """Sends :class:`Outgoing` requests over the pool their kind uses."""

    def __init__(self, gated: aiohttp.ClientSession, other: aiohttp.ClientSession) -> None:
        self._gated = gated
        self._other = other

    async def send(self, out: Outgoing, where: str) -> aiohttp.ClientResponse:
        """The backend's response (headers read, body not yet); joulegate's errors."""
        session = self._gated if out.gated else self._other
        data = out.body if out.body or out.method not in ("GET", "HEAD") else None
        url = yarl.URL(out.url, encoded=True)
        for attempt in (1, 2):
            try:
                return await session.request(
                    out.method, url, headers=list(out.headers), data=data, allow_redirects=False
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Closed before any answer: most often a kept-alive connection the backend
                # dropped just as it was reused (llama-server does), so the request never
                # reached it. aiohttp retries only idempotent methods; inference is POST.
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise backend_error(exc, where, connecting=True) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise backend_error(exc, where, connecting=True) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def backend_error(exc: BaseException, where: str, *, connecting: bool) -> ProxyError:
    """The one mapping of aiohttp's errors (and timeouts) to what the client sees."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return BackendTimeout(
            f"no connection to the backend at {where} in time "
            f"({type(exc).__name__}: every connection busy, or the backend not accepting)",
            code="backend_timeout",
        )
    if isinstance(exc, TimeoutError):
        doing = "did not answer" if connecting else "stopped answering"
        return BackendTimeout(
            f"the backend at {where} {doing} in time (read timeout)", code="backend_timeout"
        )
    if connecting:
        return BackendUnreachable(
            f"could not reach the backend at {where}: {exc or type(exc).__name__}",
            code="backend_unreachable",
        )
    return BackendUnreachable(
        f"the backend at {where} broke the connection: {exc or type(exc).__name__}",
        code="backend_unreachable",
    )


def _session(settings: Settings, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(
            total=None,
            # `connect` covers waiting for a pooled connection plus opening one.
            connect=settings.pool_timeout_s + settings.connect_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


@contextlib.asynccontextmanager
async def open_transport(settings: Settings) -> AsyncIterator[BackendTransport]:
    """Both pools, closed on exit (a resource of the app's lifespan)."""
    # A cancelled request's connection is closed, not returned: a few spare ones keep
    # the next admitted request from waiting on that.
    gated = _session(settings, settings.max_slots + 4)
    other = _session(settings, settings.max_connections)
    async with gated, other:
        yield BackendTransport(gated, other)
