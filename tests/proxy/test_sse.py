"""SSE splitting: whole events, either separator, across arbitrary chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.sse import EventSplitter

STREAM = (
    b'data: {"a": 1}\r\n\r\n'
    b": keep-alive comment\n\n"
    b'event: x\ndata: {"b":\ndata: 2}\n\n'
    b"data: [DONE]\r\n\r\n"
)


def test_events_survive_any_chunking() -> None:
    for size in (1, 2, 3, 7, 64, len(STREAM)):
        sp = EventSplitter()
        events = [e for i in range(0, len(STREAM), size) for e in sp.feed(STREAM[i : i + size])]
        assert b"".join(e.raw for e in events) == STREAM
        assert [e.data for e in events] == [b'{"a": 1}', None, b'{"b":\n2}', b"[DONE]"]
        assert events[2].decoded() == {"b": 2}
        assert sp.rest() == b""


def test_rewritten_event_keeps_its_separator() -> None:
    (ev,) = EventSplitter().feed(b'data: {"a":1}\r\n\r\n')
    assert ev.with_data({"a": 2}) == b'data: {"a":2}\r\n\r\n'
    (ev,) = EventSplitter().feed(b'data: {"a":1}\n\n')
    assert ev.with_data({"a": 2}) == b'data: {"a":2}\n\n'


def test_an_unfinished_event_is_kept_as_the_rest() -> None:
    sp = EventSplitter()
    (done,) = sp.feed(b'data: {"a":1}\n\ndata: {"b"')
    assert (done.raw, done.data) == (b'data: {"a":1}\n\n', b'{"a":1}')
    (late,) = sp.feed(b":2}\n\n")  # held back, and completed by the next chunk
    assert late.decoded() == {"b": 2}
    assert sp.rest() == b""
    cut = EventSplitter()
    (first,) = cut.feed(b'data: {"a":1}\n\ndata: {"b"')
    assert first.data == b'{"a":1}'
    assert cut.rest() == b'data: {"b"'  # a stream cut short: the unfinished event
    assert cut.rest() == b""  # handed over once


def reference_data(block: bytes) -> bytes | None:
    """An event's data, the plain way: its ``data:`` lines, one leading space dropped."""
    lines = [line[5:] for line in block.splitlines() if line.startswith(b"data:")]
    return b"\n".join(v[1:] if v.startswith(b" ") else v for v in lines) if lines else None


def reference_split(stream: bytes) -> list[tuple[bytes, bytes, bytes | None]]:
    """(raw, separator, data) of each whole event, the plain way: the earliest separator."""
    out = []
    while True:
        found = [(i, sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := stream.find(sep)) >= 0]
        if not found:
            return out
        end, sep = min(found)
        out.append((stream[: end + len(sep)], sep, reference_data(stream[:end])))
        stream = stream[end + len(sep) :]


@given(
    st.lists(
        st.sampled_from(
            [b"data: 1", b"data:2", b"data:  3", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b":"]
        ),
        max_size=60,
    ).map(b"".join),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=30),
)
def test_any_bytes_in_any_chunks_split_as_the_plain_way_does(
    stream: bytes, sizes: list[int]
) -> None:
    sp = EventSplitter()
    events, i, k = [], 0, 0
    while i < len(stream):
        size = sizes[k % len(sizes)]
        events += list(sp.feed(stream[i : i + size]))
        i, k = i + size, k + 1
    assert [(e.raw, e.separator, e.data) for e in events] == reference_split(stream)
    assert b"".join(e.raw for e in events) + sp.rest() == stream
