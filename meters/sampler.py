"""The sampler: every meter read in the background, and energy per window.

One thread reads the local meters (NVML, RAPL, the estimate) at
``meters.sample_hz`` (more often if a RAPL counter could otherwise wrap twice
between reads); the remote meters (Prometheus, IPMI, a smart plug) are read at
``meters.external_hz`` by a :class:`~meters.poller.Poller`, shared by every
machine's sampler, where a slow answer delays nothing else. Every reading goes
into its component's :class:`~meters.timeline.Track`.

A request's window costs the event loop almost nothing (its bookkeeping is
:mod:`meters.windows`, O(log open)):

* a window that opens alone has its start edge read right away by the thread, no one
  waiting (:meth:`Sampler.open_window`, or :meth:`Sampler.sample_soon` once the request
  is on its way to the backend, so the read, which holds the GIL, runs while the loop
  waits for the answer); its end waits for one more read (:meth:`Sampler.fresh_sample`:
  a ``queue.SimpleQueue`` there, a ``call_soon_threadsafe`` back), so both edges are
  exact without waiting for the next tick;
* in a crowd (other windows open) the start edge is interpolated from the regular
  ticks and the ends close together share one read at most a quarter interval after
  the last: the shares are split per sampling interval, so a read per request edge
  bought nothing but more intervals to split;
* :meth:`Sampler.measure` interpolates each track at both edges (the sum is
  :class:`~meters.window.TrackSet`'s, in :mod:`meters.window`).

An edge read that could show nothing new is not taken: when the last sample is younger
than every local meter's :attr:`~meters.base.Meter.update_period_s` (one jiffy for the
estimate's ``/proc/stat``), the end is extended from the last sample's power.

While no window is open the sampler keeps each component's **idle power**
(an exponential average with a 10 s time constant); a window's *dynamic*
energy is its total minus idle power x duration, never below zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from config.errors import MeterError
from meters.attribution import Interval
from meters.base import Activity, Meter, Reading
from meters.poller import Poller, read_now
from meters.timeline import Track
from meters.unattributed import Unattributed
from meters.window import TrackSet, WindowEnergy, WindowToken
from meters.windows import OpenWindows

log = logging.getLogger("joulegate.meters")

IDLE_TAU_S = 10.0
"""Time constant of the idle-power average."""
FRESH_TIMEOUT_S = 0.25
"""Longest a window's end waits for its fresh sample (then it extrapolates)."""
RETAIN_S = 5.0
"""Samples kept behind the oldest open window (and when none is open)."""
CROWD_GAP = 0.25
"""Crowded window ends are read this share of an interval after the last sample."""


class Sampler:
    """Reads the meters in the background and measures windows."""

    def __init__(
        self,
        meters: Sequence[Meter],
        *,
        sample_hz: float = 10.0,
        external_hz: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        activity: Activity | None = None,
        poller: Poller | None = None,
    ) -> None:
        self.meters = list(meters)
        self._poller, self._own_poller = poller or Poller(), poller is None
        self.activity = activity or Activity(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._tracks: dict[str, Track] = {}
        self._by_meter: dict[int, list[Track]] = {}
        self.ignored: list[str] = []
        """Components left out because an earlier meter measures them."""
        for meter in self.meters:
            mine = []
            for c in meter.components:
                if c in self._tracks:
                    self.ignored.append(f"{meter.name}'s {c} ({self._tracks[c].meter.name} has it)")
                    continue
                self._tracks[c] = track = Track(meter, c)
                mine.append(track)
            self._by_meter[id(meter)] = mine
        self._set = TrackSet.of(self._tracks)
        self._tracks = self._set.tracks
        local = [m for m in self.meters if not m.remote]
        self.interval_s = min([1.0 / sample_hz, *(m.max_poll_interval_s for m in local)])
        self._edge_period_s = min((m.update_period_s for m in local), default=math.inf)
        """An edge read sooner than this after the last sample shows nothing new."""
        self._sampled_s = -math.inf
        self._unattributed = Unattributed()
        self.external_interval_s = 1.0 / external_hz
        self._open = OpenWindows()
        self._last_end_s = -math.inf
        self._pruned_s = -math.inf
        self._last_t: dict[int, float] = {}
        self._failing: dict[int, str] = {}
        self._requests: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()
        """Asks for a sample now: a future to settle after it, or None (no one waits)."""
        self._batch: asyncio.Future[None] | None = None  # one read for the crowded ends
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- what is measured ---------------------------------------------------------------

    @property
    def components(self) -> tuple[str, ...]:
        """Measured components, in :data:`~meters.base.COMPONENTS` order."""
        return tuple(self._tracks)

    @property
    def label(self) -> str:
        """The meters used, e.g. ``nvml+rapl``."""
        return self._set.label

    @property
    def estimated(self) -> bool:
        """Whether any component comes from a model rather than a measurement."""
        return self._set.estimated

    def failing(self) -> dict[str, str]:
        """Meters whose last read failed, with the reason."""
        return {m.name: self._failing[id(m)] for m in self.meters if id(m) in self._failing}

    # -- reading ------------------------------------------------------------------------

    def read_meter(self, meter: Meter) -> None:
        """Read one meter now and record it (blocking; any thread)."""
        if self._by_meter.get(id(meter)):
            before = self._clock()
            readings, error = read_now(meter)
            self.record(meter, readings, error, (before + self._clock()) / 2.0)

    def record(
        self, meter: Meter, readings: Mapping[str, Reading], error: str | None, t: float
    ) -> None:
        """Keep ``meter``'s readings taken at ``t``, or a gap for ``error`` (any thread)."""
        tracks = self._by_meter.get(id(meter), [])
        with self._lock:
            for track in tracks:
                reading = readings.get(track.component)
                if reading is None or (reading.energy_j is None and reading.power_w is None):
                    track.add_gap(t, f"{meter.name}: {error or 'no ' + track.component + ' value'}")
                else:
                    track.add(t, reading)
            self._note_idle(meter, tracks, t)
        self._note_health(meter, error)

    def _note_idle(self, meter: Meter, tracks: list[Track], t: float) -> None:
        prev = self._last_t.get(id(meter))
        self._last_t[id(meter)] = t
        nominal = self.external_interval_s if meter.remote else self.interval_s
        if prev is None or self._open.count or self._last_end_s > prev or t - prev < 0.5 * nominal:
            return
        alpha = 1.0 - math.exp(-(t - prev) / IDLE_TAU_S)
        for track in tracks:
            if not track.times or track.times[-1] != t:
                continue
            power = track.recent_power_w()
            if power is None:
                continue
            old = track.idle_power_w
            track.idle_power_w = power if old is None else old + alpha * (power - old)

    def _note_health(self, meter: Meter, error: str | None) -> None:
        key = id(meter)
        if error is None:
            if self._failing.pop(key, None) is not None:
                log.info("meter %s reads again", meter.name)
        elif self._failing.get(key) != error:
            self._failing[key] = error
            log.warning("meter %s degraded: %s (requests get null for it)", meter.name, error)

    def sample(self) -> None:
        """Read every local meter now (the sampler thread's tick; tests call it)."""
        started = self._clock()
        for meter in self.meters:
            if not meter.remote:
                self.read_meter(meter)
        self._sampled_s = started  # only once its readings are in the tracks
        with self._lock:
            oldest = self._open.oldest_s()  # it covers from there what the others do
            self._unattributed.tick(started, () if oldest is None else (oldest,), self._total_j)
        now = self._clock()
        if now - self._pruned_s < 1.0:
            return
        self._pruned_s = now
        with self._lock:
            oldest = self._open.oldest_s()
            horizon = min(math.inf if oldest is None else oldest, now) - RETAIN_S
            for track in self._tracks.values():
                track.prune(horizon)

    # -- threads ------------------------------------------------------------------------

    def start(self) -> None:
        """Take first readings (blocking), then start the background threads."""
        self.sample()
        time.sleep(self.interval_s)
        self.sample()  # two readings: the idle power is known before the first request
        remote = [m for m in self.meters if m.remote and self._by_meter[id(m)]]
        for meter in remote:
            self.read_meter(meter)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run_local, name="joulegate-sampler")]
        self._threads[0].daemon = True
        self._threads[0].start()
        for meter in remote:  # from now on, at their own rate
            interval_s = min(self.external_interval_s, meter.max_poll_interval_s)
            self._poller.add(self, meter, interval_s, self._clock)

    def stop(self) -> None:
        """Stop the threads and answer anyone still waiting."""
        self._stop.set()
        self._requests.put(None)
        if self._own_poller:
            self._poller.stop()
        else:
            self._poller.remove(self)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        for fut in self._take_requests():
            with contextlib.suppress(RuntimeError):  # its loop is closed
                fut.get_loop().call_soon_threadsafe(_settle, fut)

    @property
    def running(self) -> bool:
        """Whether the background threads run."""
        return bool(self._threads)

    def _take_requests(
        self, first: asyncio.Future[None] | None = None
    ) -> list[asyncio.Future[None]]:
        waiters = [first] if first is not None else []
        while True:
            try:
                fut = self._requests.get_nowait()
            except queue.Empty:
                return waiters
            if fut is not None:
                waiters.append(fut)

    def _run_local(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            first = None
            timeout = next_tick - time.monotonic()
            if timeout > 0:
                with contextlib.suppress(queue.Empty):
                    first = self._requests.get(timeout=timeout)
            if self._stop.is_set():
                break
            waiters = self._take_requests(first)
            try:
                self.sample()
            except Exception:  # pragma: no cover - read_meter already contains errors
                log.exception("sampler tick failed")
            for fut in waiters:
                fut.get_loop().call_soon_threadsafe(_settle, fut)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = max(next_tick + self.interval_s, now + self.interval_s / 4)

    # -- windows ------------------------------------------------------------------------

    def open_window(self, start_s: float, *, sample_edge: bool = True) -> WindowToken:
        """A request holds a slot from ``start_s``. Alone, its edge is sampled now (no
        wait), or, with ``sample_edge=False``, when the caller calls :meth:`sample_soon`;
        in a crowd it is interpolated from the ticks (see the module docstring)."""
        with self._lock:
            token = self._open.open(start_s)
        self.activity.begin(start_s)
        if sample_edge and token.alone:
            self.sample_soon()
        return token

    def sample_soon(self) -> None:
        """Have the thread sample now, no one waiting (a start edge), unless it just did."""
        if not self._sampled_recently():
            self._requests.put(None)

    def _sampled_recently(self) -> bool:
        """Whether a read now could show nothing the last sample did not."""
        return self._clock() - self._sampled_s < self._edge_period_s

    def close_window(self, token: WindowToken, end_s: float) -> None:
        """The request gave its slot back at ``end_s``."""
        with self._lock:
            if not self._open.close(token):
                return
            self._last_end_s = max(self._last_end_s, end_s)
            self._unattributed.closed(token.start_s, end_s)
        self.activity.end(end_s)

    async def fresh_sample(
        self, timeout_s: float = FRESH_TIMEOUT_S, *, token: WindowToken | None = None
    ) -> None:
        """Have the local meters read once more (one hop to the sampler thread) unless they
        just were; ``token``'s end in a crowd shares one read (module docstring)."""
        if self._sampled_recently():
            return
        if not self._threads:
            await asyncio.to_thread(self.sample)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        wait_s = self._sampled_s + CROWD_GAP * self.interval_s - self._clock()
        if token is None or self._open.exclusive(token) or wait_s <= 0:
            self._requests.put(fut)
        else:
            if self._batch is None:
                self._batch = loop.create_future()  # one hop each way for them all
                loop.call_later(wait_s, self._send_batch)
            self._batch.add_done_callback(lambda _: _settle(fut))
        timer = loop.call_later(timeout_s, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()

    def _send_batch(self) -> None:
        self._requests.put(self._batch)
        self._batch = None

    def _total_j(self, start_s: float, end_s: float) -> float | None:
        return self._set.measure(start_s, end_s, exclusive=False).energy_j

    @property
    def unattributed_j(self) -> float:
        """The meters' energy with no request in flight since start (:mod:`meters.unattributed`)."""
        return self._unattributed.energy_j  # a float read: atomic, no lock needed

    def measure(self, token: WindowToken, end_s: float) -> WindowEnergy:
        """The window's energy from ``token.start_s`` to ``end_s`` (cheap: runs per request)."""
        with self._lock:
            exclusive = self._open.exclusive(token)
            return self._set.measure(token.start_s, end_s, exclusive=exclusive)

    def intervals(self, start_s: float, end_s: float, cuts: Iterable[float] = ()) -> list[Interval]:
        """The whole machine's energy per sampling interval from ``start_s`` to
        ``end_s``, also cut at ``cuts`` (:meth:`~meters.window.TrackSet.intervals`)."""
        with self._lock:
            return self._set.intervals(start_s, end_s, cuts)

    def power_w(self, over_s: float = 1.0) -> dict[str, float | None]:
        """Average power of each component over the last ``over_s`` (for live views)."""
        now = self._clock()
        with self._lock:
            energy = self._set.measure(now - over_s, now, exclusive=False)
        return {c: p.energy_j / over_s if p.energy_j is not None else None
                for c, p in energy.components.items()}  # fmt: skip

    def device_readings(self) -> list[dict[str, float | str | None]]:
        """Each component's power over the last second and its energy since start-up
        (for the ``hw.power`` and ``hw.energy`` metrics); never blocks on a meter."""
        power = self.power_w()
        with self._lock:
            totals = {c: t.total_j if t.times else None for c, t in self._tracks.items()}
        return [
            {"id": c, "type": c, "power_w": power.get(c), "energy_j": totals[c]} for c in totals
        ]

    def temperatures_c(self) -> dict[str, float]:
        """Every meter's temperatures (blocking); meters that fail are left out."""
        out: dict[str, float] = {}
        for meter in self.meters:
            try:
                out.update(meter.temperatures_c())
            except MeterError as exc:
                log.debug("no temperature from %s: %s", meter.name, exc)
        return out

    def close(self) -> None:
        """Stop the threads and close every meter."""
        self.stop()
        for meter in self.meters:
            meter.close()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
