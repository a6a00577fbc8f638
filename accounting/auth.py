"""Who is calling: joulegate-issued API keys and the auth modes.

A key is ``jg-`` followed by 43 random URL-safe characters (256 bits). Only a
salted SHA-256 digest and the key's first 11 characters (its *prefix*, shown
in ``keys list`` and the ledger) are stored. A fast hash is enough because the
secret is random, not a password: nothing can be guessed faster than the
256-bit secret itself. Keys are held in memory by prefix, so checking one per
request is a dict look-up, a hash and a constant-time compare; a key unknown in
memory is looked up in the database once (a key created a moment ago by the
CLI), and :meth:`KeyStore.load` picks up revocations. A prefix the database
does not know either is remembered as unknown (a bounded LRU, for
``auth.refresh_s`` or until keys change), so a stream of made-up ``jg-`` keys
costs no query each. A database that fails during a look-up answers 503
(``ledger_unavailable``), never a 500.

Modes (``[auth] mode``):

``keys``   ``Authorization: Bearer jg-…`` is required on every ``/v1`` request
``trust``  the user is named by ``auth.user_header`` or the body's ``user``
           field (a gateway in front has authenticated them)
``open``   everyone is ``anonymous``
``auto``   ``keys`` once the ledger has ever held a key (revoked ones count:
           revoking every key must not open the door), else ``open``

``auto`` switches to ``keys`` while serving, the moment a key exists: one made
through the admin API at once, one made by the CLI as soon as a request carries
it (an unknown ``jg-`` key is looked up, as in ``keys`` mode) or the periodic
refresh reads it, whichever comes first. The switch is logged once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from accounting.ledger import Ledger
from accounting.ledger.rows import iso, utcnow
from config import AuthSettings
from config.errors import Forbidden, LedgerError, LedgerUnavailable, Unauthorized

log = logging.getLogger("joulegate.auth")

KEY_START = "jg-"
PREFIX_CHARS = len(KEY_START) + 8
MAX_USER_CHARS = 256
MAX_UNKNOWN_PREFIXES = 4096
Mode = Literal["keys", "trust", "open"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of one request."""

    user: str
    key_prefix: str | None = None
    is_admin: bool = False
    known: bool = False
    """The ledger knows this user (a key or a budget): metrics may name them."""


ANONYMOUS = Identity("anonymous")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never the key itself, only its salted digest."""

    prefix: str
    user: str
    is_admin: bool
    created_ts: str
    revoked_ts: str | None
    salt: bytes
    digest: bytes

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this key (constant time)."""
        return hmac.compare_digest(_digest(self.salt, key), self.digest)


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8")).digest()


def check_user(user: str) -> str:
    """A user name as stored: stripped, non-empty, at most 256 characters."""
    name = user.strip()
    if not name or len(name) > MAX_USER_CHARS or not name.isprintable():
        raise ValueError(f"user names are 1 to {MAX_USER_CHARS} printable characters")
    return name


class KeyStore:
    """The ``api_keys`` table, mirrored in memory by prefix."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        unknown_ttl_s: float = 2.0,
        max_unknown: int = MAX_UNKNOWN_PREFIXES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._by_prefix: dict[str, ApiKey] = {}
        self._users: frozenset[str] = frozenset()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        """Prefixes the database did not know, oldest first, with when that expires."""
        self._unknown_ttl_s = unknown_ttl_s
        self._max_unknown = max_unknown
        self._clock = clock

    async def load(self) -> None:
        """(Re)read every key from the database."""
        rows = await self._ledger.fetchall("SELECT * FROM api_keys")
        self._set({r["prefix"]: _from_row(r) for r in rows})
        self._unknown.clear()  # keys changed: a prefix unknown so far may exist now

    def _set(self, by_prefix: dict[str, ApiKey]) -> None:
        self._by_prefix = by_prefix
        self._users = frozenset(k.user for k in by_prefix.values())

    def has_user(self, user: str) -> bool:
        """Whether some key (revoked ones included) belongs to ``user``."""
        return user in self._users

    @property
    def any_issued(self) -> bool:
        """Whether any key was ever created, revoked ones included (rows are never deleted)."""
        return bool(self._by_prefix)

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        return sorted(self._by_prefix.values(), key=lambda k: (k.created_ts, k.prefix))

    async def create(self, user: str, *, admin: bool = False) -> tuple[str, ApiKey]:
        """A new key for ``user``: the key itself (shown once) and what is stored."""
        user = check_user(user)
        for _ in range(5):
            key = KEY_START + secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            stored = ApiKey(key[:PREFIX_CHARS], user, admin, iso(utcnow()), None,
                            salt, _digest(salt, key))  # fmt: skip
            changed = await self._ledger.write(
                "INSERT OR IGNORE INTO api_keys (prefix, user, salt, digest, is_admin, created_ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stored.prefix, user, salt, stored.digest, admin, stored.created_ts),
            )
            if changed:  # else the prefix was taken (1 in 2**48): draw again
                self._set({**self._by_prefix, stored.prefix: stored})
                self._unknown.pop(stored.prefix, None)
                return key, stored
        raise LedgerError("could not draw an unused key prefix")  # pragma: no cover

    async def revoke(self, prefix: str) -> int:
        """Revoke the key with this prefix (a whole key is accepted too); how many were."""
        prefix = prefix.strip()[:PREFIX_CHARS]
        return await self._revoke("prefix = ?", prefix)

    async def revoke_user(self, user: str) -> int:
        """Revoke every key of ``user``; how many were."""
        return await self._revoke("user = ?", user)

    async def _revoke(self, where: str, value: str) -> int:
        count = await self._ledger.write(
            f"UPDATE api_keys SET revoked_ts = ? WHERE {where} AND revoked_ts IS NULL",  # noqa: S608
            (iso(utcnow()), value),
        )
        await self.load()
        return count

    async def verify(self, key: str) -> ApiKey | None:
        """The stored key ``key`` is, or None when it is unknown or wrong.

        Raises :class:`LedgerError` when the database fails during a look-up.
        """
        prefix = key[:PREFIX_CHARS]
        stored = self._by_prefix.get(prefix)
        if stored is None and key.startswith(KEY_START) and not self._known_unknown(prefix):
            rows = await self._ledger.fetchall("SELECT * FROM api_keys WHERE prefix = ?", (prefix,))
            if rows:
                stored = _from_row(rows[0])
                self._set({**self._by_prefix, prefix: stored})
            else:
                self._remember_unknown(prefix)
        if stored is None or not stored.matches(key):
            return None
        return stored

    def _known_unknown(self, prefix: str) -> bool:
        expires_s = self._unknown.get(prefix)
        if expires_s is None:
            return False
        if self._clock() >= expires_s:
            del self._unknown[prefix]
            return False
        return True

    def _remember_unknown(self, prefix: str) -> None:
        self._unknown[prefix] = self._clock() + self._unknown_ttl_s
        self._unknown.move_to_end(prefix)
        while len(self._unknown) > self._max_unknown:
            self._unknown.popitem(last=False)


def _from_row(r: Any) -> ApiKey:
    return ApiKey(r["prefix"], r["user"], bool(r["is_admin"]), r["created_ts"], r["revoked_ts"],
                  bytes(r["salt"]), bytes(r["digest"]))  # fmt: skip


class Authenticator:
    """Turns a request's headers (and body) into an :class:`Identity`, or a 401."""

    def __init__(
        self,
        settings: AuthSettings,
        keys: KeyStore,
        has_budget: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._keys = keys
        self._has_budget = has_budget
        self._user_header = settings.user_header.lower()
        self._auto = settings.mode == "auto"
        self._mode: Mode = (
            settings.mode if settings.mode != "auto" else ("keys" if keys.any_issued else "open")
        )
        self.tickets: Callable[[str], Identity | None] | None = None
        """Set by the web console: redeems the one-use bearer tickets it hands its own
        in-process requests (a playground prompt) for the signed-in user's identity;
        None for a token that is not such a ticket. Asked only once a token is no key."""

    @property
    def auto(self) -> bool:
        """Whether the mode is ``auto`` (``open`` until a key exists, then ``keys``)."""
        return self._auto

    @property
    def mode(self) -> Mode:
        """The mode in force now: ``auto`` is ``keys`` as soon as any key exists."""
        if self._auto and self._mode == "open" and self._keys.any_issued:
            self._mode = "keys"  # once: rows are never deleted, so it never goes back
            log.warning(
                "auth mode auto: an API key exists now, so every /v1 request needs one"
                " (switched from open to keys, no restart needed)"
            )
        return self._mode

    def strips_client_auth(self) -> bool:
        """Whether the client's ``Authorization`` is joulegate's to keep from the backend
        (``keys`` mode, ``auto`` once it switched)."""
        return self.mode == "keys"

    async def guard_admin(self, headers: Mapping[str, str]) -> Identity | None:
        """For endpoints public unless joulegate has keys (``/metrics``): in ``keys`` mode
        the caller must hold an admin key (401/403); in the other modes anyone passes."""
        if self.mode != "keys":
            return None
        return await self.require_admin(headers)

    async def identify(
        self, headers: Mapping[str, str], body: Mapping[str, Any] | None = None
    ) -> Identity:
        """Who sent this request; raises :class:`Unauthorized` in ``keys`` mode."""
        mode = self.mode
        token = _bearer(headers.get("authorization", ""))
        if mode == "open" and self._auto and token and token.startswith(KEY_START):
            # A key the CLI created a moment ago: finding it switches auto to keys now,
            # not at the next refresh (a made-up one costs a look-up per refresh_s).
            try:
                await self._keys.verify(token)
            except LedgerError as exc:
                log.warning("could not look up an API key: %s", exc)
            mode = self.mode
        if mode == "open":
            return ANONYMOUS
        if mode == "trust":
            return self._trusted(headers, body)
        if token is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer jg-…' (ask the operator for a key)",
                code="missing_api_key",
            )
        try:
            stored = await self._keys.verify(token)
        except LedgerError as exc:
            log.warning("could not look up an API key: %s", exc)
            raise LedgerUnavailable(
                "joulegate cannot check API keys right now (its ledger cannot be read); retry later"
            ) from exc
        if stored is None:
            ticketed = self.tickets(token) if self.tickets is not None else None
            if ticketed is not None:
                return ticketed
            raise Unauthorized("invalid API key", code="invalid_api_key")
        if stored.revoked_ts is not None:
            raise Unauthorized(
                f"the API key {stored.prefix}… was revoked at {stored.revoked_ts}",
                code="revoked_api_key",
            )
        return Identity(stored.user, stored.prefix, stored.is_admin, known=True)

    async def require_admin(self, headers: Mapping[str, str]) -> Identity:
        """The caller, who must hold an admin key: 401 without a good key, 403 without
        an admin one (for ``keys`` mode; every other mode has no admins)."""
        who = await self.identify(headers)
        if not who.is_admin:
            raise Forbidden("only an admin key may read this", code="forbidden")
        return who

    def _trusted(self, headers: Mapping[str, str], body: Mapping[str, Any] | None) -> Identity:
        named = headers.get(self._user_header)
        if not named and body is not None and isinstance(body.get("user"), str):
            named = body["user"]
        if not named:
            return ANONYMOUS
        try:
            user = check_user(named)
        except ValueError as exc:
            raise Unauthorized(f"bad user name: {exc}", code="invalid_user") from None
        return Identity(user, known=self._keys.has_user(user) or self._has_budget(user))


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
