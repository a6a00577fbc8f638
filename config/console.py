"""The web console's settings (``[console]``): where it is served, sessions, the
public playground.

Kept beside :mod:`config.sections` (one frozen dataclass per TOML table, each field's
docstring is what the settings table says about it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from config.sections import require


@dataclass(frozen=True)
class ConsoleSettings:
    """The web console (``[console]``): Playground, Compare, Usage, Live, Admin."""

    enabled: bool = True
    """Serve the console (HTML pages and their data) from joulegate itself."""
    path: str = "/console"
    """Where the console is served (a path such as ``/console``; not under ``/v1``)."""
    session_ttl_s: float = 8 * 3600.0
    """How long a signed-in console session lasts without use before it expires."""
    max_sessions: int = 10_000
    """Console sessions held in memory at once; the least recently used goes first."""
    secure_cookie: bool = False
    """Always mark the session cookie ``Secure`` (behind a proxy that terminates TLS);
    it is marked so anyway when joulegate itself is reached over ``https``."""
    public: bool = False
    """Open the Playground to visitors without a key (recorded as user ``anonymous``),
    limited per client address by ``public_requests_per_minute`` and
    ``public_max_tokens``."""
    public_requests_per_minute: int = 6
    """Public playground: prompts one client address may send per minute (429 with
    ``Retry-After`` beyond)."""
    public_max_tokens: int = 256
    """Public playground: the largest ``max_tokens`` an anonymous prompt may ask for."""

    def __post_init__(self) -> None:
        require(
            re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", self.path) is not None
            and not self.path.startswith(("/v1/", "/api/"))
            and self.path not in ("/v1", "/api", "/metrics", "/healthz", "/readyz"),
            "console.path",
            "a path such as /console, outside /v1, /api and joulegate's own routes",
        )
        require(self.session_ttl_s >= 60, "console.session_ttl_s", ">= 60")
        require(self.max_sessions >= 1, "console.max_sessions", ">= 1")
        require(
            1 <= self.public_requests_per_minute <= 10_000,
            "console.public_requests_per_minute",
            "between 1 and 10000",
        )
        require(
            1 <= self.public_max_tokens <= 100_000,
            "console.public_max_tokens",
            "between 1 and 100000",
        )
