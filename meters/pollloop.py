"""The poller's thread: every HTTP meter's reads in one :mod:`selectors` loop.

Each meter (a :class:`Job`) has a kept-alive connection of its own, non-blocking.
A read is sent when it is due (on a grid of its interval, so that every meter
polled at the same rate goes out at one wake-up), and is then in flight with its
own deadline, connecting included; the loop sleeps until the next read is due, a
deadline passes or an answer arrives. Nothing here blocks: a host name is
resolved on a thread of its own (DNS may hang).

Other threads talk to the loop through :meth:`HttpLoop.call` only (a command run
on the loop's thread, which it is woken for); everything else is the thread's own.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from config.errors import MeterError
from meters import http
from meters.base import Meter, Reading

log = logging.getLogger("joulegate.meters")

_IDLE, _CONNECTING, _SENDING, _READING = range(4)
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Sink(Protocol):
    """Where a meter's readings go: its machine's sampler."""

    def record(
        self, meter: Meter, readings: Mapping[str, Reading], error: str | None, t_s: float
    ) -> None:
        """Keep ``readings`` (or the ``error`` of a failed read) taken at ``t_s``."""

    def read_meter(self, meter: Meter) -> None:
        """Read ``meter`` now and keep its readings (blocking)."""


class Job:
    """One HTTP meter's schedule and connection."""

    def __init__(
        self,
        sink: Sink,
        meter: Meter,
        answer: Callable[[int, bytes], Mapping[str, Reading]],
        url: str,
        interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.sink, self.meter, self.answer, self.url, self.clock = sink, meter, answer, url, clock
        self.interval_s = interval_s
        _, _, self.request, (self.host, self.port) = http.request_for(url)
        self.address = resolve(self.host, self.port)
        self.named = _is_name(self.host)
        """A host name, resolved again after a failed connection (it may have moved)."""
        self.resolving = False
        self.sock: socket.socket | None = None
        self.state = _IDLE
        self.out = b""
        self.buf = bytearray()
        self.reused = False
        self.sent_s = 0.0
        self.due_s = 0.0
        self.deadline_s = math.inf


class HttpLoop:
    """The selector loop of :class:`~meters.poller.Poller`'s thread."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.jobs: list[Job] = []
        self._lock = threading.Lock()
        self._commands: list[Callable[[], None]] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._running = True
        self._ended = False
        self._wake_s = 0.0
        """When a read is next due or overdue: the jobs are looked over only then."""
        self.thread: threading.Thread | None = None
        """The loop's thread, set before it starts."""

    def call(self, command: Callable[[], None], wait_s: float = 5.0) -> None:
        """Run ``command`` on the loop's thread and wait for it (here when the loop
        does not run)."""
        if self.thread is None or self.thread is threading.current_thread() or self._ended:
            command()
            return
        done = threading.Event()

        def wrapped() -> None:
            try:
                command()
            finally:
                done.set()

        with self._lock:
            self._commands.append(wrapped)
        with contextlib.suppress(OSError):  # full, or closed: a wake-up is pending anyway
            self._wake_w.send(b"x")
        done.wait(wait_s)

    def drop(self, sink: Sink) -> None:
        """Forget ``sink``'s meters, closing their connections (on the loop's thread)."""
        for job in [j for j in self.jobs if j.sink is sink]:
            self._close(job)
            self.jobs.remove(job)

    def halt(self) -> None:
        """End :meth:`run` (on the loop's thread)."""
        self._running = False

    def close(self) -> None:
        """Close every connection and the selector (once the thread has ended)."""
        for job in self.jobs:
            self._close(job)
        self.jobs.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        """The thread's body: turn until halted."""
        try:
            while self._running:
                try:
                    self._turn()
                except Exception:  # pragma: no cover - each read's errors are caught below
                    log.exception("meter poller turn failed")
                    time.sleep(0.1)
        finally:
            self._ended = True

    def _turn(self) -> None:
        """Send what is due, fail what is overdue, wait for answers, handle them."""
        if self._commands:
            with self._lock:
                commands, self._commands = self._commands, []
            for command in commands:
                command()
            if not self._running:
                return
            self._wake_s = 0.0  # a meter may have come
        now = time.monotonic()
        if now >= self._wake_s:
            self._wake_s = self._due(now)
        timeout = None if self._wake_s == math.inf else max(0.0, self._wake_s - now)
        for key, mask in self._selector.select(timeout):
            job = key.data
            if job is None:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                self._on_event(job, mask)

    def _due(self, now: float) -> float:
        """Send the reads that are due, fail the overdue; when to look again."""
        wake_s = math.inf
        for job in self.jobs:
            if job.state == _IDLE and job.due_s <= now:
                job.due_s = next_due(now, job.interval_s)
                self._send(job, now)
            elif job.state != _IDLE and job.deadline_s <= now:
                self._fail(job, f"{job.url}: TimeoutError: no answer within {self.timeout_s} s")
            wake_s = min(wake_s, job.due_s if job.state == _IDLE else job.deadline_s)
        return wake_s

    def _idle(self, job: Job) -> None:
        """The job's read is over: its next one is due at ``due_s``."""
        job.state = _IDLE
        self._wake_s = min(self._wake_s, job.due_s)

    # -- one read -----------------------------------------------------------------------

    def _send(self, job: Job, now: float) -> None:
        job.buf.clear()
        job.out = job.request
        job.sent_s = job.clock()
        job.deadline_s = now + self.timeout_s
        job.reused = job.sock is not None
        if job.sock is None:
            self._connect(job)
        else:
            self._write(job)

    def _connect(self, job: Job) -> None:
        if job.address is None:
            self._resolve_soon(job)
            self._fail(job, f"{job.url}: cannot resolve {job.host} (yet)")
            return
        family, address = job.address
        job.sock = sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            job.state = _CONNECTING
            self._broken(job, OSError(err, os.strerror(err)))
            return
        self._selector.register(sock, _WRITE, job)
        job.state = _CONNECTING

    def _write(self, job: Job) -> None:
        if job.sock is None:
            return
        try:
            sent = job.sock.send(job.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._broken(job, exc)
            return
        job.out = job.out[sent:]
        if job.out:
            if job.state != _SENDING:
                self._selector.modify(job.sock, _READ | _WRITE, job)
            job.state = _SENDING
        else:
            if job.state == _SENDING:
                self._selector.modify(job.sock, _READ, job)
            job.state = _READING

    def _on_event(self, job: Job, mask: int) -> None:
        sock = job.sock
        if sock is None:
            return
        if job.state == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._broken(job, OSError(err, os.strerror(err)))
                return
            self._selector.modify(sock, _READ, job)
            job.state = _READING  # the request goes out whole or the rest is awaited
            self._write(job)
            return
        if mask & _WRITE and job.state == _SENDING:
            self._write(job)
        if not mask & _READ:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(job, exc)
            return
        if job.state == _IDLE:  # the meter closed the kept connection (or sent junk)
            self._close(job)
            return
        job.reused = job.reused and not data  # an answer began: this read is not retried
        arrived_s = job.clock()
        buf: bytes | bytearray = data  # most answers come in one piece: no copy
        if job.buf:
            job.buf += data
            buf = job.buf
        try:
            if len(buf) > http.MAX_BODY_BYTES:
                raise ValueError(f"answer larger than {http.MAX_BODY_BYTES} bytes")
            answer = http.parse_answer(buf, eof=not data)
        except ValueError as exc:
            self._broken(job, exc)
            return
        if answer is None:
            if buf is data:
                job.buf += data
            return
        status, body, close, used = answer
        if close or used != len(buf):
            self._close(job)
        self._idle(job)
        try:
            readings, error = job.answer(status, body), None
        except MeterError as exc:
            readings, error = {}, str(exc)
        except Exception as exc:  # a bug in an adapter must not stop the poller
            log.exception("meter %s failed unexpectedly", job.meter.name)
            readings, error = {}, f"{type(exc).__name__}: {exc}"
        job.sink.record(job.meter, readings, error, (job.sent_s + arrived_s) / 2.0)

    def _broken(self, job: Job, exc: BaseException) -> None:
        """The connection failed: once more on a new one if it was a kept connection
        the meter had closed meanwhile, else the read fails."""
        self._close(job)
        if job.reused:
            job.reused = False
            job.out = job.request
            self._connect(job)
            return
        if job.state == _CONNECTING and job.named:
            job.address = None  # the name is resolved again: the meter may have moved
        self._fail(job, f"{job.url}: {type(exc).__name__}: {exc}")

    def _resolve_soon(self, job: Job) -> None:
        """Resolve a meter's host name on a thread of its own (DNS may hang)."""
        if job.resolving:
            return
        job.resolving = True

        def lookup() -> None:
            address = resolve(job.host, job.port)

            def found() -> None:
                job.address, job.resolving = address, False

            self.call(found)

        threading.Thread(target=lookup, name="joulegate-resolve", daemon=True).start()

    def _fail(self, job: Job, error: str) -> None:
        self._close(job)
        self._idle(job)
        job.sink.record(job.meter, {}, error, (job.sent_s + job.clock()) / 2.0)

    def _close(self, job: Job) -> None:
        if job.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(job.sock)
        job.sock.close()
        job.sock = None


def next_due(now: float, interval_s: float) -> float:
    """The next instant on the grid of ``interval_s`` after ``now``."""
    return (math.floor(now / interval_s) + 1) * interval_s


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def resolve(host: str, port: int) -> tuple[int, tuple[str, int]] | None:
    """The first address of ``host`` (blocking; None when it has none)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    family, _, _, _, address = info[0]
    return family, (str(address[0]), int(address[1]))
