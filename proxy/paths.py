"""One spelling per request path, decided once at intake.

The gating decision, the ledger's ``endpoint`` and the backend URL must all see
the same path, or ``/v1/%63hat/completions`` is forwarded (and served) as a chat
completion while joulegate books it as something it does not meter.
:func:`canonical_path` turns the raw ASGI path into that one spelling, or
refuses it with :class:`~config.errors.BadRequest` (``code="invalid_path"``).
"""

from __future__ import annotations

import string
from collections.abc import Collection

from config.errors import BadRequest

# RFC 3986 section 2.3: an escape of one of these means the character itself.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# What RFC 3986 allows literally in a path: pchar and "/" ("%" starts an escape).
_ALLOWED = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
_HEX = frozenset(string.hexdigits)
# Escapes that would let a segment hide a separator from us but not from a
# backend that decodes before routing.
_SEPARATORS = frozenset({0x2F, 0x5C})
_SHOWN_CHARS = 120


def canonical_path(raw_path: bytes, mounts: Collection[str]) -> str:
    """The one spelling of ``raw_path``, which must stay under one of ``mounts``.

    ``mounts`` are path prefixes such as ``{"/v1"}`` or ``{"/v1", "/api"}``.
    In order:

    1. every escape of an unreserved character (``ALPHA DIGIT - . _ ~``) is
       decoded, and the hex of every other escape is written in upper case
       (RFC 3986 6.2.2.1-2), so ``/v1/%63hat`` is ``/v1/chat`` and ``%2e`` is ``.``;
    2. empty segments are dropped, so ``//`` is ``/``;
    3. dot segments are removed (RFC 3986 5.2.4), including decoded ones;
    4. a trailing slash is dropped: no OpenAI or Ollama route is spelled with
       one, and keeping it would let ``/v1/chat/completions/`` reach a lenient
       backend's chat route while missing joulegate's metered set.

    The result starts with a mount followed by ``/``, or is exactly a mount,
    and is sent to the backend as it is. ``canonical_path`` of a result is
    that result. Refused, each as ``BadRequest`` with ``code="invalid_path"``:
    a path that does not start with ``/``, holds a character RFC 3986 does not
    allow in a path (a space, a quote, a literal backslash, a byte outside
    ASCII), a ``%`` without two hex digits, an encoded ``/`` or ``\\``, a NUL or
    other control character (literal or encoded), a ``..`` above the root, or
    that after all this is not under a mount.
    """
    shown = raw_path[:_SHOWN_CHARS].decode("ascii", "backslashreplace")
    if not raw_path.startswith(b"/"):
        raise _refuse(shown, "does not start with '/'")
    segments: list[str] = []
    for raw_segment in raw_path.split(b"/"):
        segment = _normal_segment(raw_segment, shown)
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise _refuse(shown, "climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(segments)
    roots = {m.rstrip("/") for m in mounts}
    if not any(path == root or path.startswith(root + "/") for root in roots):
        raise _refuse(shown, f"is not under {' or '.join(sorted(roots))}")
    return path


def _normal_segment(raw: bytes, shown: str) -> str:
    """One segment with unreserved escapes decoded and the others upper-cased."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte < 0x20 or byte == 0x7F:
            raise _refuse(shown, "holds a control character")
        char = chr(byte)
        if char == "\\":
            raise _refuse(shown, "holds a backslash")
        if byte > 0x7F or char not in _ALLOWED:
            raise _refuse(shown, f"holds {char!r}, which a path may not hold unescaped")
        if char != "%":
            out.append(char)
            i += 1
            continue
        hex_digits = raw[i + 1 : i + 3].decode("ascii", "replace")
        if len(hex_digits) != 2 or not set(hex_digits) <= _HEX:
            raise _refuse(shown, "holds a '%' that is not followed by two hex digits")
        value = int(hex_digits, 16)
        if value in _SEPARATORS:
            raise _refuse(shown, "holds an encoded '/' or '\\'")
        if value < 0x20 or value == 0x7F:
            raise _refuse(shown, "holds an encoded control character")
        out.append(chr(value) if chr(value) in _UNRESERVED else "%" + hex_digits.upper())
        i += 3
    return "".join(out)


def _refuse(shown: str, why: str) -> BadRequest:
    return BadRequest(f"path {shown!r} {why}", code="invalid_path")
