"""Console sessions, CSRF tokens and the one-use tickets its playground prompts carry.

A browser holds only a random session id, in a cookie that is ``HttpOnly`` (no script
reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure`` when the
console is served over TLS. The key a user signs in with is checked once and never
kept: the session holds the identity it proved (user, key prefix, admin or not).
Every visitor gets a session, signed in or not, so every state-changing request can
carry the session's CSRF token (a hidden form field, or the ``x-csrf-token`` header
for the pages' scripts); signing in replaces the session (a new id), so an id seen
before sign-in is worth nothing after it.

Sessions live in memory (``console.max_sessions``, least recently used first out)
and expire after ``console.session_ttl_s`` without use; a restart signs everyone
out. A session whose key is revoked ends at its next request.

A playground prompt is forwarded in-process to joulegate's own
``/v1/chat/completions``, authenticated by a *ticket*: 256 random bits, good once,
for a few seconds, standing for the session's identity
(:attr:`accounting.auth.Authenticator.tickets` redeems it).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from accounting.auth import Identity

COOKIE = "jg_console"
TICKET_START = "jgt-"
TICKET_TTL_S = 30.0
MAX_TICKETS = 4096


@dataclass(slots=True)
class Session:
    """One browser's session: who it is (None: not signed in) and its CSRF token."""

    sid: str
    who: Identity | None
    csrf: str
    expires_s: float
    created_s: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by id, in memory, least recently used first."""

    def __init__(
        self,
        ttl_s: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._tickets: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid`` names (its expiry pushed back), or None."""
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now >= session.expires_s:
            del self._by_id[sid]
            return None
        session.expires_s = now + self._ttl_s
        self._by_id.move_to_end(sid)
        return session

    def new(self, who: Identity | None = None) -> Session:
        """A fresh session (a new id and CSRF token) for ``who``."""
        session = Session(
            sid=secrets.token_urlsafe(32),
            who=who,
            csrf=secrets.token_urlsafe(32),
            expires_s=self._clock() + self._ttl_s,
        )
        self._by_id[session.sid] = session
        while len(self._by_id) > self._max:
            self._by_id.popitem(last=False)
        return session

    def end(self, sid: str) -> None:
        """Forget session ``sid`` (sign-out)."""
        self._by_id.pop(sid, None)

    def end_prefix(self, prefix: str) -> int:
        """End every session signed in with the key ``prefix`` (revoked); how many."""
        gone = [s.sid for s in self._by_id.values() if s.who and s.who.key_prefix == prefix]
        for sid in gone:
            del self._by_id[sid]
        return len(gone)

    def ticket(self, who: Identity) -> str:
        """A one-use bearer ticket standing for ``who`` for :data:`TICKET_TTL_S`."""
        token = TICKET_START + secrets.token_urlsafe(32)
        self._tickets[token] = (who, self._clock() + TICKET_TTL_S)
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.popitem(last=False)
        return token

    def redeem(self, token: str) -> Identity | None:
        """The identity of ticket ``token`` (which is then spent), or None."""
        if not token.startswith(TICKET_START):
            return None
        held = self._tickets.pop(token, None)
        if held is None or self._clock() >= held[1]:
            return None
        return held[0]
