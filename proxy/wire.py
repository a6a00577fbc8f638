"""What joulegate writes to the client itself: JSON, errors, its own headers.

Also the rules for which of the backend's response headers go on to the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar.types import Receive, Send

from config.errors import InternalError, ProxyError
from proxy.exchange import Exchange

encode_json = msgspec.json.Encoder().encode
decode_json = msgspec.json.Decoder().decode

DROP_RESPONSE = frozenset(
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

OWNED_RESPONSE_PREFIXES = (b"x-energy-", b"x-co2e-", b"x-carbon-", b"x-sci-", b"x-joulegate-")


def relayed(name: bytes) -> bool:
    """Whether a backend's response header goes on to the client."""
    lower = name.lower()
    return lower not in DROP_RESPONSE and not lower.startswith(OWNED_RESPONSE_PREFIXES)


async def send_json(
    send: Send, status: int, obj: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send ``obj`` as a whole JSON response."""
    body = encode_json(obj)
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


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for the ``energy`` object (3 decimals), None kept."""
    return None if seconds is None else round(seconds * 1000.0, 3)


def request_id_header(ex: Exchange) -> tuple[bytes, bytes]:
    """joulegate's own id of the request (the ledger's ``request_id``)."""
    return (b"x-request-id", ex.request_id.encode())


def fmt_ms(value_ms: float) -> bytes:
    """A duration in ms as a header value (one decimal)."""
    return f"{value_ms:.1f}".encode()


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
