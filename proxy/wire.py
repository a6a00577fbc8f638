"""What joulegate writes to the client itself: JSON, errors, its own headers.

Also the rules for which of the backend's response headers go on to the client.
"""

from __future__ import annotations

import asyncio
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


class DisconnectWatch:
    """Cancels the task that opens it if the client leaves before :meth:`close`.

    The request is forwarded in its own task (a child task and a wait for it would cost
    two task switches a request); after a ``CancelledError``, :meth:`took_back` says
    whether the client's leaving was its only cause, and takes it back if so.
    """

    __slots__ = ("_open", "_task", "_watcher", "left")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self._open = True
        self.left = False
        self._watcher = asyncio.ensure_future(wait_disconnect(receive))
        self._watcher.add_done_callback(self._fired)

    def _fired(self, watcher: asyncio.Future[None]) -> None:
        gone = not watcher.cancelled() and watcher.exception() is None
        if gone and self._open and self._task is not None:
            self.left = True
            self._task.cancel()

    def took_back(self) -> bool:
        """True when the cancellation being handled was the client leaving alone (it is
        then taken back); False for any other (the server stopping: let it through)."""
        return self.left and self._task is not None and self._task.uncancel() == 0

    def close(self) -> None:
        """Stop watching (the forwarding is over, whatever happens next)."""
        self._open = False
        self._watcher.remove_done_callback(self._fired)
        self._watcher.cancel()
