"""Giving memory back to the system once a burst of dropped answers is over.

A stalled reader's answer is dropped after ``write_timeout_s`` and everything it held
(a backend read, its events, the client's write buffer: ~1 MB a stream at 4 KiB
events) is freed. glibc's allocator keeps freed pages for reuse, though, and 64
stalled streams left joulegate ~90 MB larger for good: its resident memory only grew
with each burst (issue 31, defect 3). :func:`trim_soon` asks glibc
(``malloc_trim``) to return what is free, once per burst: a second after the first
drop, in a worker thread (the call releases the GIL, the loop keeps serving).
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("joulegate.proxy")

TRIM_DELAY_S = 1.0
"""How long after a drop the trim runs: the burst's other drops, and the freeing of
what they held, come first, and the burst costs one trim."""


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        return None
    return trim


_TRIM = _malloc_trim()
_scheduled: set[asyncio.AbstractEventLoop] = set()


def trim_soon() -> None:
    """Return freed memory to the system in :data:`TRIM_DELAY_S`, unless that is
    already planned on this loop."""
    loop = asyncio.get_running_loop()
    if _TRIM is None or loop in _scheduled:
        return
    _scheduled.add(loop)
    loop.call_later(TRIM_DELAY_S, _trim, loop)


def _trim(loop: asyncio.AbstractEventLoop) -> None:
    _scheduled.discard(loop)
    if _TRIM is not None and not loop.is_closed():
        loop.run_in_executor(None, _TRIM, 0).add_done_callback(_done)


def _done(done: asyncio.Future[int]) -> None:
    if not done.cancelled() and done.exception() is not None:  # pragma: no cover
        log.warning("malloc_trim failed: %s", done.exception())
