"""What the live path feeds the attribution: prompt tokens, first token, backend timings."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from meters.attribution import Interval, attribute
from meters.request_work import approx_prompt_tokens, work_of
from proxy.exchange import BackendTimings, Exchange
from proxy.gate import Window
from proxy.schema import note_chunk

LLAMA_TIMINGS = {
    "prompt_n": 12, "prompt_ms": 200.0, "prompt_per_token_ms": 16.7,
    "predicted_n": 30, "predicted_ms": 1500.0, "predicted_per_second": 20.0,
}  # fmt: skip


def _exchange(*, stream: bool, body: dict[str, Any] | None = None) -> Exchange:
    return Exchange(
        request_id="r1", method="POST", path="/v1/chat/completions", endpoint="chat/completions",
        headers={}, window=Window(arrived_s=0.0, admitted_s=1.0), body=body,
        arrived_at=dt.datetime.now(dt.UTC), gated=True, stream=stream,
    )  # fmt: skip


def test_llama_server_timings_are_read_from_a_whole_answer() -> None:
    ex = _exchange(stream=False)
    note_chunk(ex, {"choices": [], "timings": LLAMA_TIMINGS})
    assert ex.backend_timings == BackendTimings(12, 0.2, 30, 1.5)


def test_ollama_durations_are_read_as_timings() -> None:
    ex = _exchange(stream=True)
    last = {"done": True, "prompt_eval_count": 9, "prompt_eval_duration": 300_000_000,
            "eval_count": 5, "eval_duration": 1_000_000_000}  # fmt: skip
    note_chunk(ex, last)
    assert ex.backend_timings == BackendTimings(9, 0.3, 5, 1.0)


def test_malformed_timings_are_unknown_not_zero() -> None:
    ex = _exchange(stream=False)
    note_chunk(ex, {"timings": {"prompt_n": "12", "prompt_ms": -1, "predicted_ms": True}})
    assert ex.backend_timings == BackendTimings(None, None, None, None)


def test_prompt_tokens_prefer_usage_then_timings_then_the_body() -> None:
    parts = [{"type": "text", "text": "y" * 20}]
    body = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "user", "content": parts}]}
    ex = _exchange(stream=True, body=body)
    assert approx_prompt_tokens(body) == 15.0
    assert work_of(ex, 1.0, 2.0).prompt_tokens == 15.0
    ex.backend_timings = BackendTimings(prompt_n=11)
    assert work_of(ex, 1.0, 2.0).prompt_tokens == 11.0
    ex.prompt_tokens = 13
    assert work_of(ex, 1.0, 2.0).prompt_tokens == 13.0


def test_a_stream_prefills_until_its_first_token_placed_by_timings() -> None:
    ex = _exchange(stream=True)
    ex.prompt_tokens = 12
    ex.token_events = [(3.0, 1), (3.1, 1)]
    w = work_of(ex, 1.0, 4.0)
    assert (w.prefill_start_s, w.first_byte_s) == (1.0, 3.0)  # no timings: from admission
    ex.backend_timings = BackendTimings(12, 0.2, 2, 0.1)
    w = work_of(ex, 1.0, 4.0)
    assert w.prefill_start_s == pytest.approx(2.8) and w.first_byte_s == 3.0
    assert w.token_events == ex.token_events


def test_a_stream_with_no_token_yet_is_still_prefilling() -> None:
    ex = _exchange(stream=True, body={"prompt": "z" * 80})
    w = work_of(ex, 1.0, 2.5)
    assert (w.prompt_tokens, w.first_byte_s, w.has_events) == (20.0, 2.5, True)
    ex.window.finished_s = 2.5  # it ended without a token: nothing located
    assert not work_of(ex, 1.0, 2.5).has_events


def test_a_whole_answer_is_placed_by_its_timings_else_time_shared() -> None:
    ex = _exchange(stream=False)
    assert not work_of(ex, 1.0, 4.0).has_events
    note_chunk(ex, {"timings": LLAMA_TIMINGS, "usage": {"prompt_tokens": 12}})
    w = work_of(ex, 1.0, 4.0)
    assert w.first_byte_s == pytest.approx(2.5) and w.prefill_start_s == pytest.approx(2.3)
    assert (w.decode_tokens, w.decode_end_s, w.prompt_tokens) == (30.0, 4.0, 12.0)


def test_timings_move_a_whole_answers_dynamic_energy_to_where_it_decoded() -> None:
    # A whole answer decoding only in the last half of [0, 2] beside a stream decoding
    # only in the first half: with timings each gets the dynamic energy of its own half.
    intervals = [Interval(k * 0.1, (k + 1) * 0.1, 10.0, 40.0) for k in range(20)]
    stream = _exchange(stream=True)
    stream.token_events = [(0.05 + 0.1 * k, 1) for k in range(10)]
    whole = _exchange(stream=False)
    blind = attribute(intervals, [work_of(stream, 0.0, 2.0), work_of(whole, 0.0, 2.0)])
    note_chunk(whole, {"timings": {"prompt_n": 0, "predicted_n": 10, "predicted_ms": 1000.0}})
    placed = attribute(intervals, [work_of(stream, 0.0, 2.0), work_of(whole, 0.0, 2.0)])
    assert [s.method for s in blind.shares] == ["token_share", "time_share"]
    assert blind.shares[1].energy_j == pytest.approx(100.0)  # half of everything
    assert [s.method for s in placed.shares] == ["token_share", "token_share"]
    assert placed.shares[0].dynamic_j == pytest.approx(60.0)  # 6 J dynamic x 10 intervals
    assert placed.shares[1].dynamic_j == pytest.approx(60.0)
    assert placed.shares[1].idle_j == pytest.approx(40.0)  # idle still by time
