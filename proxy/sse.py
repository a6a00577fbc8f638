"""Server-sent events, one event at a time, for the streaming path.

The backend's bytes are split into whole events (``\\n\\n`` or ``\\r\\n\\r\\n``
terminated, as sse-starlette sends them) so that each event can be forwarded
as soon as it is complete. Events joulegate does not change are forwarded
byte for byte; a changed event is re-serialised with its original separator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass(slots=True)
class Event:
    """One complete SSE event as it arrived."""

    raw: bytes
    """The event's bytes, separator included."""
    data: bytes | None
    """The joined ``data:`` lines, or None if the event has none."""
    separator: bytes

    def decoded(self) -> Any:
        """The data parsed as JSON, or None if it is not JSON."""
        if self.data is None:
            return None
        try:
            return _decode(self.data)
        except msgspec.DecodeError:
            return None

    def with_data(self, obj: Any) -> bytes:
        """This event re-serialised with new JSON data."""
        line = self.separator[: len(self.separator) // 2]
        return b"data: " + _encode(obj) + line + line


class EventSplitter:
    """Feed raw chunks, get back whole events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """Yield every event completed by ``chunk``.

        One pass over the bytes: each separator is searched for from where the last
        event ended (a chunk often holds many events), and ``\\r\\n\\r\\n`` not at
        all once the buffer has none."""
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        crlf = buf.find(b"\r\n\r\n")
        lf = buf.find(b"\n\n")
        while crlf >= 0 or lf >= 0:
            if lf < 0 or (0 <= crlf < lf):
                end, sep = crlf, b"\r\n\r\n"
            else:
                end, sep = lf, b"\n\n"
            stop = end + len(sep)
            yield Event(raw=buf[pos:stop], data=_data_of(buf[pos:end]), separator=sep)
            pos = stop
            if 0 <= crlf < pos:
                crlf = buf.find(b"\r\n\r\n", pos)
            if 0 <= lf < pos:
                lf = buf.find(b"\n\n", pos)
        self._buf = buf[pos:] if pos else buf

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream cut short)."""
        rest, self._buf = self._buf, b""
        return rest


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block:
        return block[6:]  # one data line, as servers send nearly every event
    parts: list[bytes] = []
    for line in block.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
