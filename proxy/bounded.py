"""The client's ``send``, every call bounded by ``write_timeout_s``, with one timer.

A send to a client that reads nothing waits for its socket buffer to drain; past
``write_timeout_s`` the answer is dropped (:class:`ClientStalled`) so the client
cannot hold a slot forever. ``asyncio.timeout`` around each call would schedule and
cancel a timer for every SSE event of a stream; here each call only notes when it
began, and one timer per answer, re-armed lazily, looks at the call in progress when
it fires. Cancellation follows ``asyncio.timeout``: the sending task is cancelled,
and the cancellation is turned into ``ClientStalled`` only if it was this timer's.
"""

from __future__ import annotations

import asyncio

from litestar.types import Message, Send

from proxy.heap import trim_soon


class ClientStalled(Exception):
    """The client took nothing of its answer for ``write_timeout_s``."""


class BoundedSend:
    """``send`` with each call bounded by ``timeout_s``; :meth:`close` when the answer ends."""

    __slots__ = ("_began", "_cancelling", "_expired", "_loop", "_send", "_task", "_timer",
                 "timeout_s")  # fmt: skip

    def __init__(self, send: Send, timeout_s: float) -> None:
        self._send = send
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._began: float | None = None
        """Loop time the call in progress began; None between calls."""
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __call__(self, message: Message) -> None:
        """Send ``message``; raise ClientStalled if it waits longer than ``timeout_s``."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI servers call apps inside a task
            await self._send(message)
            return
        self._task, self._began = task, self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._began + self.timeout_s, self._check)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() <= self._cancelling:
                    raise ClientStalled from None
            raise
        finally:
            self._began = None

    def _check(self) -> None:
        self._timer = None
        began, task = self._began, self._task
        if began is None or task is None:
            return  # no call in progress: the next one arms the timer again
        due = began + self.timeout_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._expired = True
        self._cancelling = task.cancelling()
        task.cancel()
        trim_soon()  # what the dropped answer held goes back to the system

    def close(self) -> None:
        """The answer is over: drop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
