"""What the console holds while joulegate runs, opened by its component.

:class:`ConsoleState` is a resource published on the :class:`~proxy.context.AppContext`
(``ctx.get(ConsoleState)``): the session store, the public playground's rate limit,
the templates and the static files. Static files are read from the installed package
once, at start-up, and served from memory: every asset comes from joulegate itself,
none from a CDN (these servers often have no internet).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources

import jinja2

from accounting.ledger.stage import Accounting
from config.console import ConsoleSettings
from proxy.console.sessions import SessionStore
from proxy.context import AppContext

log = logging.getLogger("joulegate.console")

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
MAX_LIMITED_ADDRESSES = 10_000


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, content type and ETag."""

    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file under ``static/`` by its relative path (``vendor/uPlot.min.css``)."""
    root = resources.files("proxy.console").joinpath("static")
    out: dict[str, Asset] = {}

    def walk(folder: resources.abc.Traversable, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
                continue
            suffix = "." + item.name.rpartition(".")[2]
            if suffix not in _TYPES:
                continue
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            out[prefix + item.name] = Asset(body, _TYPES[suffix], etag)

    walk(root, "")
    return out


def template_env() -> jinja2.Environment:
    """The pages' templates, autoescaped: model text and user names render as text."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("proxy.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class RateLimit:
    """At most ``per_minute`` events per key (a client address) in any 60 s."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Count one event for ``key``: None when allowed, else seconds to wait."""
        now = self._clock()
        times = self._seen.get(key)
        if times is None:
            times = self._seen[key] = deque()
        self._seen.move_to_end(key)
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self._per_minute:
            return max(1.0, math.ceil(60.0 - (now - times[0])))
        times.append(now)
        while len(self._seen) > MAX_LIMITED_ADDRESSES:
            self._seen.popitem(last=False)
        return None


@dataclass
class Recorded:
    """The idle and dynamic joules of the ledger's rows of one machine."""

    idle_j: float = 0.0
    dynamic_j: float = 0.0


@dataclass
class SinceStart:
    """This host's recorded idle and dynamic joules since the console started, per
    machine (every request admitted has one; rows without one are under None)."""

    last_id: int = 0
    by_machine: dict[str | None, Recorded] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self, acc: Accounting) -> None:
        """Mark where start-up left the ledger: rows after it are this run's."""
        rows = await acc.ledger.fetchall("SELECT MAX(id) FROM requests")
        self.last_id = int(rows[0][0] or 0)

    async def update(self, acc: Accounting) -> None:
        """Add the rows recorded since the last call (an indexed range of row ids)."""
        async with self.lock:
            rows = await acc.ledger.fetchall(
                "SELECT machine, MAX(id), TOTAL(energy_j - energy_dynamic_j),"
                " TOTAL(energy_dynamic_j) FROM requests"
                " WHERE id > ? AND host = ? AND energy_dynamic_j IS NOT NULL GROUP BY machine",
                [self.last_id, acc.host],
            )
            for machine, last_id, idle_j, dynamic_j in rows:
                recorded = self.by_machine.setdefault(machine, Recorded())
                recorded.idle_j += float(idle_j)
                recorded.dynamic_j += float(dynamic_j)
                self.last_id = max(self.last_id, int(last_id))


@dataclass
class ConsoleState:
    """The console's resources while the app runs."""

    settings: ConsoleSettings
    sessions: SessionStore
    limit: RateLimit
    templates: jinja2.Environment = field(default_factory=template_env)
    assets: dict[str, Asset] = field(default_factory=load_assets)
    started_ts: float = field(default_factory=time.time)
    """When this joulegate started (UTC epoch seconds): Live's totals count from here."""
    since_start: SinceStart = field(default_factory=SinceStart)
    """Live's idle and dynamic joules recorded since start-up."""


@contextlib.asynccontextmanager
async def console_component(ctx: AppContext) -> AsyncIterator[None]:
    """Component: open the console's state; its prompts authenticate with tickets the
    ledger's authenticator redeems (place it after ``accounting_resource``)."""
    cfg = ctx.settings.console
    if not cfg.enabled:
        yield None
        return
    state = ConsoleState(
        cfg,
        SessionStore(cfg.session_ttl_s, cfg.max_sessions),
        RateLimit(cfg.public_requests_per_minute),
    )
    acc = ctx.get(Accounting)
    if acc is not None:
        acc.auth.tickets = state.sessions.redeem
        await state.since_start.start(acc)
    ctx.publish(state)
    log.info("console at http://%s:%d%s", ctx.settings.host, ctx.settings.port, cfg.path)
    try:
        yield None
    finally:
        if acc is not None:
            acc.auth.tickets = None
        ctx.withdraw(ConsoleState)
