"""When the sampler's intervals are split among overlapping requests, and where.

The :class:`~meters.sharing.OverlapBook` splits each interval once; the
:class:`ShareCloser` decides when, and runs the split on a worker thread of its own, so
the event loop goes on relaying meanwhile (at 512 streams an interval has 512 parts):

* a finishing request asks for every interval up to its end (:meth:`ShareCloser.through`)
  once the sampler has read its end edge, and waits for that split; requests finishing
  close together are served by one split, as the next one begins four times the last
  one's duration after it, never more than :data:`MAX_PAUSE_S` (so splits under 5 ms
  take at most a fifth of the time whatever the crowd, and a finishing request waits
  at most a few of those durations);
* while requests run and none finishes, it splits every :data:`PERIOD_S` up to two
  sampling periods behind now (sampled on both sides, so the energies are final), which
  keeps each split small.

The thread is Python and takes the GIL in turns with the loop (the interpreter hands
it over every few milliseconds at most), so a split still costs the process its CPU;
what moves off the loop is the wait: no request's finish or chunk runs a split inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from meters.sampler import Sampler
from meters.sharing import OverlapBook

log = logging.getLogger("joulegate.meters")

PERIOD_S = 0.5
"""How often the intervals are split while no request finishes."""
MAX_PAUSE_S = 0.02
"""The longest pause between two splits a finishing request may wait through."""
WAIT_S = 5.0
"""The longest a finishing request waits for its split (then it gets its window's energy)."""


class ShareCloser:
    """Splits the book's intervals from the sampler's tracks, off the event loop."""

    def __init__(self, sampler: Sampler, book: OverlapBook) -> None:
        self._sampler = sampler
        self._book = book
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._pause_s = 0.0
        self._executor: ThreadPoolExecutor | None = None

    async def through(self, end_s: float) -> bool:
        """Wait until every interval up to ``end_s`` is split; False if that took more
        than :data:`WAIT_S` (the closer is stuck or gone)."""
        if self._book.split_through_s >= end_s:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((end_s, fut))
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, WAIT_S)
        return self._book.split_through_s >= end_s

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ShareCloser]:
        """Split in the background while the context is open (a lifespan resource)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="joulegate-shares")
        task = asyncio.create_task(self._run(), name="joulegate-shares")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(self._executor.shutdown)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), PERIOD_S)
                self._wake.clear()
                waiters, self._waiters = self._waiters, []
                behind = time.monotonic() - 2 * self._sampler.interval_s
                point = max((end for end, _ in waiters), default=behind)
                began = time.monotonic()
                try:
                    if point > self._book.split_through_s:
                        edges = list(self._book.busy_edges)
                        await loop.run_in_executor(self._executor, self._split, point, edges)
                        self._book.forget_edges(self._book.split_through_s)
                except Exception:
                    log.exception("splitting the meters' intervals failed")
                finally:
                    _release(waiters)
                if waiters:
                    took = time.monotonic() - began
                    await asyncio.sleep(min(MAX_PAUSE_S, 4 * took))
        finally:
            _release(self._waiters)

    def _split(self, point_s: float, edges: list[float]) -> None:
        """On the worker thread: split every interval from the last split to ``point_s``."""
        book = self._book
        start = book.next_start_s()
        if start is None or start >= point_s:
            book.skip_to(point_s)
            return
        cuts = [t for t in edges if start < t < point_s]
        intervals = self._sampler.intervals(start, point_s, cuts)
        if intervals:
            book.split(intervals, point_s)
        else:
            book.skip_to(point_s)


def _release(waiters: list[tuple[float, asyncio.Future[None]]]) -> None:
    for _, fut in waiters:
        if not fut.done():
            fut.set_result(None)
