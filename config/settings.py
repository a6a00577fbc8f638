"""joulegate's settings: the top-level keys, and one section of each kind.

The sections (``[meters]``, ``[carbon]``, ``[ledger]``, …) are in
:mod:`config.sections`. Each field's docstring is what the README's settings
table says about it. The loader (``config.loader``) fills these from a TOML
file, ``JOULEGATE_*`` environment variables and CLI flags; ``__post_init__``
rejects bad values with a :class:`~config.errors.ConfigError` that names the key.

Top-level keys are flat (``backend_url`` / ``JOULEGATE_BACKEND_URL``); a
section's keys live in a TOML table (``[carbon] provider``) and in the
environment as ``JOULEGATE_<SECTION>_<KEY>`` (``JOULEGATE_CARBON_PROVIDER``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

from config.console import ConsoleSettings
from config.errors import ConfigError
from config.machines import LOCAL_MACHINE, MachineSettings
from config.sections import (
    AuthSettings,
    BackendSettings,
    BudgetSettings,
    CarbonSettings,
    LedgerSettings,
    MeterSettings,
    TelemetrySettings,
    require,
)

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Settings:
    """Everything joulegate reads at start-up."""

    host: str = "127.0.0.1"
    """Address joulegate listens on."""
    port: int = 8400
    """Port joulegate listens on."""
    backend_url: str = "http://127.0.0.1:8080"
    """Base URL of the OpenAI-compatible model server (without ``/v1``); used when
    ``backends`` is empty."""
    backends: tuple[BackendSettings, ...] = ()
    """Several model servers, routed by the request's ``model``: ``[[backends]]``
    tables in the file, or comma-separated URLs in ``JOULEGATE_BACKENDS``."""
    backend_refresh_s: float = 30.0
    """How often backends without configured ``models`` are asked for their models."""
    backend_api_key: str = ""
    """Key sent to the backend as ``Authorization: Bearer`` instead of the client's."""
    ollama_native: bool = False
    """Also forward Ollama's native ``/api/`` paths."""
    max_concurrency: int = 1
    """Requests forwarded to the backend at once (1 = serialised, exact attribution)."""
    max_queue: int = 256
    """Requests allowed to wait; beyond it clients get 503 with Retry-After."""
    max_body_bytes: int = 16 * MiB
    """Largest request body accepted (413 beyond)."""
    max_queued_bytes: int = 256 * MiB
    """Request bodies held at once, being read or waiting in the queue (503
    ``queue_full`` beyond): bounds the memory queued requests take."""
    max_header_bytes: int = 64 * KiB
    """Largest request line plus headers accepted (431 beyond)."""
    head_timeout_s: float = 10.0
    """Longest a client may take to send a request's line and headers, from its
    connection (or its previous answer) on; then the connection is closed (408)."""
    body_timeout_s: float = 30.0
    """Longest a client may pause between two pieces of a request body before the
    connection is closed (the request is refused; the backend never sees it)."""
    max_client_connections: int = 4096
    """Client connections open at once. Beyond it, a new connection closes the oldest
    one that is idle (no request in progress, or a request head still coming); with
    none idle, the new one is refused (503). Lowered to the process's open-files limit
    less a reserve for backends and the ledger."""
    max_parsed_answer_bytes: int = 32 * MiB
    """A non-streamed answer larger than this is relayed without being parsed: its
    energy is then in the headers only, and its tokens are unknown."""
    readyz_cache_s: float = 2.0
    """How long ``/readyz`` reuses its backend checks: however often it is called, each
    backend is asked at most once per this many seconds."""
    max_connections: int = 64
    """Connections to the backends for requests outside the gate (model lists, files);
    gated requests have ``max_concurrency`` of their own and never wait behind these."""
    connect_timeout_s: float = 5.0
    """Timeout for connecting to the backend (504 beyond)."""
    pool_timeout_s: float = 10.0
    """Longest wait for a free backend connection (504 beyond)."""
    read_timeout_s: float = 600.0
    """Timeout between bytes from the backend (504 beyond)."""
    write_timeout_s: float = 30.0
    """A client that takes nothing of its answer for this long loses it: the backend
    request is cancelled, the slot freed, the row says ``client_stalled``."""
    gated_paths: tuple[str, ...] = ()
    """Extra paths (e.g. ``/v1/audio/speech``) that pass the gate and are metered."""
    stream_usage: bool = True
    """Ask the backend for token usage on streams (``stream_options.include_usage``)
    and strip that extra chunk when the client did not ask for it."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level; at ``info`` every request gets one access line (method, path, status,
    user, model, queue and duration in ms, energy in J, meter, failure)."""
    log_format: Literal["text", "json"] = "text"
    """How log lines are written to standard error: ``text``, or ``json`` (one JSON
    object per line, the access line's fields as keys)."""
    machines: tuple[MachineSettings, ...] = ()
    """Several measurement machines, each with its own backends, meters, queue and
    cool-down (``[[machines]]`` tables); empty means this one machine, named ``local``,
    described by ``backends``, ``meters``, ``max_concurrency`` and ``max_queue``."""
    meters: MeterSettings = field(default_factory=MeterSettings)
    carbon: CarbonSettings = field(default_factory=CarbonSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "port", "a port number 1-65535")
        require(
            self.backend_url.startswith(("http://", "https://")),
            "backend_url",
            "an http:// or https:// URL",
        )
        require(self.backend_refresh_s > 0, "backend_refresh_s", "> 0")
        require(1 <= self.max_concurrency <= 1024, "max_concurrency", "between 1 and 1024")
        require(0 <= self.max_queue <= 100_000, "max_queue", "between 0 and 100000")
        labels: set[str] = set()
        for machine in self.machine_list:
            _check_backends(machine.backends, labels)
        if self.machines:
            require(not self.backends, "backends", "empty with [[machines]] (use "
                    "[[machines.backends]])")  # fmt: skip
            require(self.meters == MeterSettings(), "meters", "unset with [[machines]] (use "
                    "[machines.meters])")  # fmt: skip
            names = [m.name for m in self.machines]
            twice = sorted({n for n in names if names.count(n) > 1})
            require(not twice, "machines", f"machines with distinct names ({twice} twice)")
        require(self.max_body_bytes >= 1024, "max_body_bytes", ">= 1024")
        require(self.max_queued_bytes >= self.max_body_bytes, "max_queued_bytes",
                 ">= max_body_bytes")  # fmt: skip
        require(self.max_header_bytes >= 4 * KiB, "max_header_bytes", ">= 4096")
        for name in ("head_timeout_s", "body_timeout_s"):
            require(getattr(self, name) > 0, name, "> 0")
        require(
            8 <= self.max_client_connections <= 1_000_000,
            "max_client_connections",
            "between 8 and 1000000",
        )
        require(self.max_parsed_answer_bytes >= 1024, "max_parsed_answer_bytes", ">= 1024")
        require(1 <= self.max_connections <= 10_000, "max_connections", "between 1 and 10000")
        require(0 <= self.readyz_cache_s <= 3600, "readyz_cache_s", "between 0 and 3600")
        for name in ("connect_timeout_s", "pool_timeout_s", "read_timeout_s", "write_timeout_s"):
            require(getattr(self, name) > 0, name, "> 0")
        for p in self.gated_paths:
            require(p.startswith("/"), "gated_paths", "paths starting with '/'")

    @property
    def backend_list(self) -> tuple[BackendSettings, ...]:
        """The backends to route to: ``backends``, else ``backend_url`` alone (with
        ``[[machines]]``: every machine's, in order)."""
        if self.machines:
            return tuple(b for m in self.machines for b in m.backends)
        return self.backends or (BackendSettings(url=self.backend_url),)

    @functools.cached_property
    def machine_list(self) -> tuple[MachineSettings, ...]:
        """The machines: ``machines``, else one local machine from the top-level keys."""
        return self.machines or (
            MachineSettings(
                name=LOCAL_MACHINE,
                local=True,
                backends=self.backends or (BackendSettings(url=self.backend_url),),
                meters=self.meters,
                max_concurrency=self.max_concurrency,
                max_queue=self.max_queue,
            ),
        )

    @property
    def max_slots(self) -> int:
        """Requests in flight at once over every machine (the gated pool's size)."""
        return sum(m.max_concurrency for m in self.machine_list)

    @property
    def shared_windows(self) -> bool:
        """Whether some machine lets requests overlap (their energy is then shared)."""
        return any(m.max_concurrency > 1 for m in self.machine_list)


def _check_backends(backends: tuple[BackendSettings, ...], labels: set[str]) -> None:
    """One machine's backends: names distinct over every machine, no model twice here."""
    claimed: dict[str, str] = {}
    for b in backends:
        require(
            b.label not in labels, "backends", f"backends with distinct names ({b.label!r} twice)"
        )
        labels.add(b.label)
        for m in b.models:
            if m in claimed:
                raise ConfigError(
                    f"setting 'backends': model {m!r} is served by both "
                    f"{claimed[m]!r} and {b.label!r}"
                )
            claimed[m] = b.label
