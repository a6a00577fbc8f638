"""One thread polls every remote meter of every machine.

A gateway in front of N machines reads N wall meters ``external_hz`` times a
second each (16 at 10 Hz: 160 reads a second). A thread per meter paid a wake-up
and a blocking round trip per read; :class:`Poller` reads them all from one thread:

* **HTTP meters** (Prometheus, Shelly, Tasmota over ``http://``; see
  :class:`~meters.http.Polled`) are read with non-blocking sockets in one
  :mod:`selectors` loop (:mod:`meters.pollloop`), each over a kept-alive connection
  of its own. Reads are due on a grid of their interval, so the meters of every
  machine polled at the same rate go out together, at one wake-up per interval.
  Every read in flight has its own deadline (``timeout_s``, connecting included):
  a slow meter delays no other, its read stays in flight while the others come and
  go, and its next read is due only once it has answered or timed out (then its
  machine's track has a gap and the meter is reported failing on that machine, as
  after any failed read).
* **Other remote meters** (``ipmitool`` as a subprocess, a meter over ``https://``
  or with a client passed in) block while they read: each keeps a thread of its
  own, as before.

A reading is timestamped with its sampler's clock at the midpoint of the request's
send and the answer's arrival (as :meth:`~meters.sampler.Sampler.read_meter` does)
and goes to the :class:`Sink` that added the meter, never another's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from config.errors import MeterError
from meters import http
from meters.base import Meter, Reading
from meters.pollloop import HttpLoop, Job, Sink, next_due

__all__ = ["READ_TIMEOUT_S", "Poller", "Sink", "read_now"]

log = logging.getLogger("joulegate.meters")

READ_TIMEOUT_S = 2.0
"""Longest a read may take, connecting included, before it counts as failed."""


def read_now(meter: Meter) -> tuple[Mapping[str, Reading], str | None]:
    """Read ``meter`` (blocking): its readings and no error, or none and why."""
    try:
        return meter.read(), None
    except MeterError as exc:
        return {}, str(exc)
    except Exception as exc:  # a bug in an adapter must not stop the sampler
        log.exception("meter %s failed unexpectedly", meter.name)
        return {}, f"{type(exc).__name__}: {exc}"


class Poller:
    """Reads remote meters in the background for any number of samplers."""

    def __init__(self, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._loop: HttpLoop | None = None
        self._thread: threading.Thread | None = None
        self._workers: list[tuple[Sink, threading.Event, threading.Thread]] = []
        self._lock = threading.Lock()
        """Samplers may start and stop from several threads at once."""

    @property
    def running(self) -> bool:
        """Whether any of its threads runs."""
        return self._thread is not None or bool(self._workers)

    def add(self, sink: Sink, meter: Meter, interval_s: float, clock: Callable[[], float]) -> None:
        """Read ``meter`` every ``interval_s`` from now on for ``sink``, timestamped by
        ``clock`` (blocking: the meter's host name is resolved here)."""
        url = meter.poll_url() if isinstance(meter, http.Polled) else None
        if url is None or not isinstance(meter, http.Polled):
            self._add_blocking(sink, meter, interval_s)
            return
        job = Job(sink, meter, meter.poll_answer, url, interval_s, clock)
        job.due_s = next_due(time.monotonic(), interval_s)
        loop = self._start()
        loop.call(lambda: loop.jobs.append(job))

    def remove(self, sink: Sink, timeout_s: float = 5.0) -> None:
        """Stop reading ``sink``'s meters: no reading reaches it once this returns
        (a blocking read still running after ``timeout_s`` is abandoned)."""
        with self._lock:
            mine = [w for w in self._workers if w[0] is sink]
            self._workers = [w for w in self._workers if w[0] is not sink]
        _join(mine, timeout_s)
        loop = self._loop
        if loop is not None:
            loop.call(lambda: loop.drop(sink), wait_s=timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every read, in flight or not, and join the threads within ``timeout_s``
        (a read in flight is abandoned, not awaited)."""
        with self._lock:
            workers, self._workers = self._workers, []
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        _join(workers, timeout_s)
        if loop is None or thread is None:
            return
        loop.call(loop.halt, wait_s=timeout_s)
        thread.join(timeout=timeout_s)
        if not thread.is_alive():
            loop.close()

    def _start(self) -> HttpLoop:
        with self._lock:
            if self._loop is None:
                self._loop = loop = HttpLoop(self.timeout_s)
                loop.thread = self._thread = threading.Thread(
                    target=loop.run, name="joulegate-poller", daemon=True
                )
                self._thread.start()
            return self._loop

    def _add_blocking(self, sink: Sink, meter: Meter, interval_s: float) -> None:
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval_s):
                sink.read_meter(meter)

        thread = threading.Thread(target=run, name=f"joulegate-{meter.name}", daemon=True)
        with self._lock:
            self._workers.append((sink, stop, thread))
        thread.start()


def _join(workers: list[tuple[Sink, threading.Event, threading.Thread]], timeout_s: float) -> None:
    for _, stop, _ in workers:
        stop.set()
    deadline = time.monotonic() + timeout_s
    for _, _, thread in workers:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
