"""The serialising gate: a FIFO of requests with ``max_concurrency`` slots.

Only requests holding a slot talk to the backend, so with one slot the
machine's energy between a request's admission and its last byte belongs to
that request alone. Waiters are served strictly in arrival order. A waiter
that is cancelled (its client left) leaves the queue at once; a slot handed to
a task in the same instant it is cancelled is given back, so the gate cannot
leak a slot.

The thermal guard pauses the gate: nothing new is admitted while paused, and
each request learns how long it waited because of a pause. A machine's cool-down
(``cooldown_s`` after every ``cooldown_every`` requests) is a pause too, with a
reason of its own so that neither ends the other: the gate admits again once no
reason holds it.

With several machines serving a model, :func:`acquire_first` waits on several
gates at once: the request takes a free slot on one of them at once, else waits in
each queue that has room and is admitted by whichever frees a slot first, so it
never waits in one machine's queue while another that serves its model is idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
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


THERMAL = "thermal"
"""The thermal guard's pause reason."""
COOLDOWN = "cooldown"
"""A machine's cool-down's pause reason."""


class Gate:
    """FIFO admission with a fixed number of slots and a bounded queue."""

    def __init__(
        self,
        max_concurrency: int = 1,
        max_queue: int = 256,
        clock: Callable[[], float] = time.monotonic,
        *,
        cooldown_s: float = 0.0,
        cooldown_every: int = 0,
    ) -> None:
        self._max = max_concurrency
        self._max_queue = max_queue
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[Gate]] = deque()
        self._paused_since: float | None = None
        self._paused_total_s = 0.0
        self._pauses: set[str] = set()
        self._mean_duration_s = 1.0
        self._cooldown_s = cooldown_s
        self._cooldown_every = cooldown_every if cooldown_s > 0 else 0
        self._admitted = 0
        self._cooling: asyncio.TimerHandle | None = None
        self.cooldowns = 0
        """Cool-downs begun since start-up."""

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
        """Whether the thermal guard (or a cool-down) has stopped admissions."""
        return self._paused_since is not None

    @property
    def free(self) -> bool:
        """Whether a request arriving now would be admitted at once."""
        return self._in_flight < self._max and not self._waiters and self._paused_since is None

    @property
    def load(self) -> float:
        """Slots taken and requests waiting, per slot: how soon a newcomer would start."""
        return (self._in_flight + len(self._waiters)) / self._max

    def _paused_total(self) -> float:
        if self._paused_since is None:
            return self._paused_total_s
        return self._paused_total_s + (self._clock() - self._paused_since)

    async def acquire(self, window: Window) -> None:
        """Wait for a slot in arrival order; raise QueueFull when the queue is full."""
        await acquire_first((self,), window)

    def _take(self) -> None:
        """A request takes a slot (counted towards the next cool-down)."""
        self._in_flight += 1
        if self._cooldown_every:
            self._admitted += 1
            if self._admitted % self._cooldown_every == 0:
                self.pause(COOLDOWN)  # admit nothing more; the rest starts once idle

    def _queue_full(self) -> QueueFull:
        retry_s = max(1, round(self._mean_duration_s * (len(self._waiters) + 1) / self._max))
        return QueueFull(
            f"joulegate's queue is full ({self._max_queue} requests waiting); retry later",
            code="queue_full",
            headers={"retry-after": str(retry_s)},
        )

    def release(self, duration_s: float | None = None) -> None:
        """Give a slot back and admit the next waiter, if any."""
        if duration_s is not None:
            self._mean_duration_s += 0.2 * (duration_s - self._mean_duration_s)
        self._in_flight -= 1
        if self._in_flight == 0 and COOLDOWN in self._pauses and self._cooling is None:
            self.cooldowns += 1
            self._cooling = asyncio.get_running_loop().call_later(self._cooldown_s, self._cooled)
        self._wake()

    def _cooled(self) -> None:
        self._cooling = None
        self.resume(COOLDOWN)

    def _wake(self) -> None:
        while self._paused_since is None and self._in_flight < self._max and self._waiters:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            fut.set_result(self)
            self._take()

    def pause(self, reason: str = THERMAL) -> None:
        """Admit nothing new until :meth:`resume` (requests in flight go on)."""
        self._pauses.add(reason)
        if self._paused_since is None:
            self._paused_since = self._clock()

    def resume(self, reason: str = THERMAL) -> None:
        """``reason`` no longer holds the gate; admit again, in arrival order, once
        nothing does."""
        self._pauses.discard(reason)
        if self._paused_since is not None and not self._pauses:
            self._paused_total_s += self._clock() - self._paused_since
            self._paused_since = None
            self._wake()

    def paused_for(self, reason: str) -> bool:
        """Whether ``reason`` holds the gate."""
        return reason in self._pauses


async def acquire_first(gates: Sequence[Gate], window: Window) -> Gate:
    """A slot on one of ``gates``: the first free one at once, else the first that
    frees one while the request waits in every queue with room; QueueFull when none
    has room. Returns the gate to :meth:`Gate.release` the slot to."""
    for gate in gates:
        if gate.free:
            gate._take()
            window.admitted_s = gate._clock()
            return gate
    room = [g for g in gates if len(g._waiters) < g._max_queue]
    if not room:
        raise min(gates, key=lambda g: g.load)._queue_full()
    paused_at_arrival = [g._paused_total() for g in room]
    fut: asyncio.Future[Gate] = asyncio.get_running_loop().create_future()
    for gate in room:
        gate._waiters.append(fut)
    try:
        admitted = await fut
    except asyncio.CancelledError:
        if fut.done() and not fut.cancelled():
            fut.result().release()
        _leave(room, fut)
        raise
    if len(room) > 1:
        _leave(room, fut)  # its places in the other queues
    window.admitted_s = admitted._clock()
    window.thermal_wait_s = admitted._paused_total() - paused_at_arrival[room.index(admitted)]
    return admitted


def waiting_on(gates: Sequence[Gate]) -> int:
    """Requests queued for a slot on any of ``gates``, each once: a request for a model
    several machines serve waits in each of their queues (read-only; the console's
    gateway total)."""
    return len({id(f) for gate in gates for f in gate._waiters if not f.done()})


def _leave(gates: Sequence[Gate], fut: asyncio.Future[Gate]) -> None:
    for gate in gates:
        if fut in gate._waiters:  # a release meanwhile may have dropped it
            gate._waiters.remove(fut)


class PauseReason:
    """One reason's hold on a gate: what the thermal guard pauses and resumes, so that
    it neither ends a cool-down nor mistakes one for its own pause."""

    def __init__(self, gate: Gate, reason: str) -> None:
        self._gate = gate
        self._reason = reason

    @property
    def paused(self) -> bool:
        """Whether this reason holds the gate."""
        return self._gate.paused_for(self._reason)

    def pause(self) -> None:
        """Hold the gate for this reason."""
        self._gate.pause(self._reason)

    def resume(self) -> None:
        """Let go of the gate for this reason."""
        self._gate.resume(self._reason)
