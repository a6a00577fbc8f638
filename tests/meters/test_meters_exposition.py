"""What the poller parses itself: HTTP/1.1 answers arriving in pieces, and the wanted
series of a Prometheus page (the same samples as ``prometheus_client``'s parser)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meters.http import parse_answer
from meters.prometheus import samples

WANTED = "wall_power_watts"
NAMES = [WANTED, WANTED + "_total", WANTED + "_max", "wall_power", "other_" + WANTED, "up"]
label_values = st.text(alphabet='ab"\\\n ,{}=', max_size=6)
label_sets = st.dictionaries(st.sampled_from(["psu", "outlet", "le"]), label_values, max_size=3)
values = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value!r}" if labels else f"{name} {value!r}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), label_sets, values), max_size=12))
def test_the_wanted_series_are_the_samples_prometheus_client_finds(
    lines: list[tuple[str, dict[str, str], float]],
) -> None:
    page = "# HELP wall_power_watts power at the wall\n# TYPE wall_power_watts gauge\n"
    page += "".join(_line(*line) + "\n" for line in lines)
    wanted = {WANTED, WANTED + "_total"}
    theirs = sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name in wanted
    )
    ours = sorted((n, sorted(labels.items()), v) for n, labels, v in samples(page.encode(), wanted))
    assert ours == theirs


def test_a_sample_line_that_is_not_the_text_format_is_an_error() -> None:
    with pytest.raises(ValueError):
        list(samples(b'wall_power_watts{psu="1" 3\n', {WANTED}))
    with pytest.raises(ValueError):
        list(samples(b"wall_power_watts twelve\n", {WANTED}))


def _wire(body: bytes, framing: str, chunks: list[int]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return head + b"Connection: close\r\n\r\n" + body
    out, rest = head + b"Transfer-Encoding: chunked\r\n\r\n", body
    for size in chunks:
        piece, rest = rest[: max(1, size)], rest[max(1, size) :]
        if piece:
            out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
    if rest:
        out += b"%x\r\n" % len(rest) + rest + b"\r\n"
    return out + b"0\r\nTrailer: x\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    framing=st.sampled_from(["length", "chunked", "close"]),
    chunks=st.lists(st.integers(1, 64), max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_an_answer_arriving_in_pieces_is_whole_exactly_when_its_last_byte_is_in(
    body: bytes, framing: str, chunks: list[int], cuts: list[int]
) -> None:
    wire = _wire(body, framing, chunks)
    pipelined = b"HTTP/1.1 200 OK\r\n"  # the start of another answer must be left alone
    buf = bytearray()
    for end in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        complete = end == len(wire) and framing != "close"
        buf += wire[len(buf) : end]
        answer = parse_answer(buf + (pipelined if complete else b""))
        assert (answer is not None) == complete
    if framing == "close":
        answer = parse_answer(buf, eof=True)
        assert answer is not None and answer[2]  # the server closes
    assert answer is not None
    status, got, _, used = answer
    assert (status, got, used) == (200, body, len(wire))


def test_a_connection_closed_mid_answer_is_an_error() -> None:
    wire = _wire(b"x" * 50, "length", [])
    with pytest.raises(ValueError):
        parse_answer(wire[:-1], eof=True)
