"""The serialising gate: a FIFO of requests with ``max_concurrency`` slots.

Only requests holding a slot talk to the backend, so with one slot the
machine's energy between a request's admission and its last byte belongs to
that request alone. Waiters are served strictly in arrival order. A waiter
that is cancelled (its client left) leaves the queue at once; a slot handed to
a task in the same instant it is cancelled is given back, so the gate cannot
leak a slot.

The thermal guard pauses the gate: nothing new is admitted while paused, and
each request learns how long it waited because of a pause.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from config.errors import QueueFull


@dataclass(slots=True)
class Window:
    """A request's timeline on the monotonic clock (seconds)."""

    arrived_s: float
    admitted_s: float | None = None
    first_byte_s: float | None = None
    finished_s: float | None = None
    thermal_wait_s: float = 0.0

    @property
    def queue_s(self) -> float:
        """Time spent waiting for a slot (thermal pauses included)."""
        end = self.admitted_s if self.admitted_s is not None else self.finished_s
        return max(0.0, (end or self.arrived_s) - self.arrived_s)

    @property
    def duration_s(self) -> float | None:
        """Time from admission to the last byte; None before it finished or if never admitted."""
        if self.admitted_s is None or self.finished_s is None:
            return None
        return max(0.0, self.finished_s - self.admitted_s)


class Gate:
    """FIFO admission with a fixed number of slots and a bounded queue."""

    def __init__(
        self,
        max_concurrency: int = 1,
        max_queue: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_concurrency
        self._max_queue = max_queue
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._paused_since: float | None = None
        self._paused_total_s = 0.0
        self._mean_duration_s = 1.0

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        return sum(1 for f in self._waiters if not f.done())

    @property
    def paused(self) -> bool:
        """Whether the thermal guard has stopped admissions."""
        return self._paused_since is not None

    def _paused_total(self) -> float:
        if self._paused_since is None:
            return self._paused_total_s
        return self._paused_total_s + (self._clock() - self._paused_since)

    async def acquire(self, window: Window) -> None:
        """Wait for a slot in arrival order; raise QueueFull when the queue is full."""
        paused_at_arrival = self._paused_total()
        if self._in_flight < self._max and not self._waiters and self._paused_since is None:
            self._in_flight += 1
        else:
            if len(self._waiters) >= self._max_queue:
                retry_s = max(
                    1, round(self._mean_duration_s * (len(self._waiters) + 1) / self._max)
                )
                raise QueueFull(
                    f"joulegate's queue is full ({self._max_queue} requests waiting); retry later",
                    code="queue_full",
                    headers={"retry-after": str(retry_s)},
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self.release()
                elif fut in self._waiters:  # a release meanwhile may have dropped it
                    self._waiters.remove(fut)
                raise
        window.admitted_s = self._clock()
        window.thermal_wait_s = self._paused_total() - paused_at_arrival

    def release(self, duration_s: float | None = None) -> None:
        """Give a slot back and admit the next waiter, if any."""
        if duration_s is not None:
            self._mean_duration_s += 0.2 * (duration_s - self._mean_duration_s)
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._paused_since is None and self._in_flight < self._max and self._waiters:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            fut.set_result(None)
            self._in_flight += 1

    def pause(self) -> None:
        """Admit nothing new until :meth:`resume` (requests in flight go on)."""
        if self._paused_since is None:
            self._paused_since = self._clock()

    def resume(self) -> None:
        """Admit again, in arrival order."""
        if self._paused_since is not None:
            self._paused_total_s += self._clock() - self._paused_since
            self._paused_since = None
            self._wake()
