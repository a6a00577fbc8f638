"""The sampler's open windows: how many, the oldest, and which had the machine alone.

Each request opens a window when it is admitted and closes it when it finishes; at 512
streams a few hundred are open at once and a hundred open and close every second, so
neither may walk the others:

* **exclusive** (no other window overlapped it) is derived, not flagged on every open
  window: a window opened while none was open is exclusive as long as no window has
  been opened since (a count of windows opened so far, compared with the one it got);
* the **oldest start** (the sampler keeps its history from there and counts what no
  window covered up to it) is the top of a heap of starts, closed windows left in it
  until they reach the top (and swept out when they are half of it).

Opening and closing cost O(log open) at most. Not thread-safe: the sampler holds its
lock around every call.
"""

from __future__ import annotations

import heapq

from meters.window import WindowToken


class OpenWindows:
    """The windows open now (see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        """Windows open now."""
        self._opened = 0
        """Windows opened so far: each token's serial is the count when it opened."""
        self._starts: list[tuple[float, int]] = []
        """(start, serial) of open windows, and of closed ones not swept out yet."""
        self._closed: set[int] = set()
        """Serials of closed windows still in :attr:`_starts`."""

    def open(self, start_s: float) -> WindowToken:
        """A window opens at ``start_s``."""
        self._opened += 1
        token = WindowToken(start_s, serial=self._opened, alone=self.count == 0)
        self.count += 1
        heapq.heappush(self._starts, (start_s, token.serial))
        return token

    def close(self, token: WindowToken) -> bool:
        """``token``'s window closes; False if it was closed already. Its exclusivity
        is settled now: windows opened later did not overlap it."""
        if token.closed:
            return False
        token.exclusive = self.exclusive(token)
        token.closed = True
        self.count -= 1
        self._closed.add(token.serial)
        if len(self._closed) > 64 and 2 * len(self._closed) > len(self._starts):
            self._starts = [s for s in self._starts if s[1] not in self._closed]
            heapq.heapify(self._starts)
            self._closed.clear()
        return True

    def exclusive(self, token: WindowToken) -> bool:
        """Whether no other window has overlapped ``token``'s so far."""
        if token.closed:
            return token.exclusive
        return token.alone and token.serial == self._opened

    def oldest_s(self) -> float | None:
        """The earliest start of the windows open now; None when none is."""
        starts, closed = self._starts, self._closed
        while starts and starts[0][1] in closed:
            closed.discard(heapq.heappop(starts)[1])
        return starts[0][0] if starts else None
