"""Reading OpenAI-compatible answers: what joulegate takes from each object or chunk.

Chat and completions objects, their stream chunks, the Responses API's objects and
typed events, and Ollama's native answers: ids, models, tokens, finish reasons and
(when a stage asks for it) the text.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.exchange import BackendTimings, Exchange

RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
MAX_TOKENS = 10**9
"""The most tokens one answer or prompt is believed to have: a backend's count outside
0..MAX_TOKENS (negative, or 2**64) is not a count, and is taken as unknown (None), so it
never reaches a total, a report, or a database column it would overflow."""


class _PlainDelta(msgspec.Struct):
    content: Any = None


class _PlainChoice(msgspec.Struct):
    """A choice that is still going: no finish reason, no whole message."""

    delta: _PlainDelta | None = None
    text: Any = None
    finish_reason: None = None
    message: None = None


class _PlainChunk(msgspec.Struct):
    """A chat or completions stream chunk in the middle of an answer: choices that are
    still going and nothing else :func:`note_chunk` reads.

    Every other field :func:`note_chunk` looks at is declared ``None``, so a chunk that
    carries one (usage, timings, a finish, a Responses or Ollama field) fails to decode
    as this type and takes the general path; unknown fields are skipped unparsed.
    """

    choices: list[_PlainChoice]
    id: Any = None
    model: Any = None
    object: Any = None
    usage: None = None
    timings: None = None
    type: None = None
    response: None = None
    message: None = None
    eval_count: None = None
    done_reason: None = None


_decode_plain = msgspec.json.Decoder(_PlainChunk).decode


def note_plain_chunk(ex: Exchange, data: bytes, collect: bool = False) -> bool | None:
    """:func:`note_chunk` for the common stream chunk, read straight from its bytes.

    Returns whether a choice carried text, or None when ``data`` is not such a chunk
    (then decode it and call :func:`note_chunk`): most of a stream's events are this
    shape, and a typed decode that skips what joulegate does not read costs a fraction
    of building the whole object and walking it.
    """
    try:
        chunk = _decode_plain(data)
    except msgspec.DecodeError:  # ValidationError included: not this shape
        return None
    if not chunk.choices or chunk.object == "response":
        return None
    if ex.response_id is None and isinstance(chunk.id, str):
        ex.response_id = chunk.id
    if isinstance(chunk.model, str):
        ex.model_served = chunk.model
    has_text = False
    for c in chunk.choices:
        content = c.delta.content if c.delta is not None else None
        piece = content if isinstance(content, str) else c.text
        if isinstance(piece, str) and piece:
            has_text = True
            if collect:
                ex.response_text = (ex.response_text or "") + piece
    return has_text


def note_chunk(ex: Exchange, obj: dict[str, Any], collect: bool = False) -> tuple[bool, bool]:
    """Pick what stages need from a response object or stream chunk, in one pass.

    Returns whether any choice carried text and whether any carried a finish reason
    (what the stream relay decides on).
    """
    if isinstance(obj.get("response"), dict) and isinstance(obj.get("type"), str):
        _note_response_event(ex, obj["type"], obj["response"])
        return False, False
    if ex.response_id is None and isinstance(obj.get("id"), str):
        ex.response_id = obj["id"]
    if isinstance(obj.get("model"), str):
        ex.model_served = obj["model"]
    if isinstance(obj.get("eval_count"), int):  # Ollama's native answers
        ex.completion_tokens = _int(obj["eval_count"])
        if isinstance(obj.get("prompt_eval_count"), int):
            ex.prompt_tokens = _int(obj["prompt_eval_count"])
        if isinstance(obj.get("eval_duration"), int):  # nanoseconds
            ex.backend_timings = BackendTimings(
                _int(obj.get("prompt_eval_count")), _s(obj.get("prompt_eval_duration"), 1e9),
                _int(obj["eval_count"]), _s(obj["eval_duration"], 1e9),
            )  # fmt: skip
    timings = obj.get("timings")  # llama-server's, in whole answers and last chunks
    if isinstance(timings, dict):
        ex.backend_timings = BackendTimings(
            _int(timings.get("prompt_n")), _s(timings.get("prompt_ms"), 1e3),
            _int(timings.get("predicted_n")), _s(timings.get("predicted_ms"), 1e3),
        )  # fmt: skip
    if isinstance(obj.get("done_reason"), str) and obj["done_reason"]:
        ex.finish_reasons.append(obj["done_reason"])
    if obj.get("object") == "response":  # a whole Responses API answer
        _note_response_event(ex, "", obj)
    if collect:
        message = obj.get("message")
        piece = message.get("content") if isinstance(message, dict) else obj.get("response")
        if isinstance(piece, str) and piece:
            ex.response_text = (ex.response_text or "") + piece
    _note_usage(ex, obj.get("usage"))
    has_text = has_finish = False
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if not isinstance(c, dict):
                continue
            reason = c.get("finish_reason")
            if isinstance(reason, str) and reason:
                ex.finish_reasons.append(reason)
                has_finish = True
            piece = _text_of(c)
            if piece:
                has_text = True
                if collect:
                    ex.response_text = (ex.response_text or "") + piece
    return has_text, has_finish


def put_energy(obj: dict[str, Any], energy: dict[str, Any]) -> None:
    """Set (replace, never merge into) ``energy`` where a client reads it: in the
    ``response`` of a Responses stream's last event, else at the top."""
    inner = obj.get("response")
    if obj.get("type") in RESPONSES_FINAL and isinstance(inner, dict):
        inner["energy"] = energy
    else:
        obj["energy"] = energy


def _int(value: Any) -> int | None:
    """A token count as the backend gave it, or None unless an int in 0..MAX_TOKENS."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _s(value: Any, per_s: float) -> float | None:
    """A duration in the backend's unit (``per_s`` of them a second) as seconds; None
    unless a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value) / per_s


def _note_usage(ex: Exchange, usage: Any) -> None:
    """Token counts in OpenAI's chat (prompt/completion) or Responses (input/output) names."""
    if not isinstance(usage, dict):
        return
    for name, attr in (
        ("prompt_tokens", "prompt_tokens"),
        ("input_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"),
        ("output_tokens", "completion_tokens"),
    ):
        if isinstance(usage.get(name), int):  # out of range: unknown, not the last seen
            setattr(ex, attr, _int(usage[name]))


def _note_response_event(ex: Exchange, kind: str, response: dict[str, Any]) -> None:
    """A Responses API object: whole, or inside a stream's ``response.*`` event."""
    if ex.response_id is None and isinstance(response.get("id"), str):
        ex.response_id = response["id"]
    if isinstance(response.get("model"), str):
        ex.model_served = response["model"]
    _note_usage(ex, response.get("usage"))
    status = response.get("status")
    # "completed", "incomplete" or "failed": the Responses API's finish reason.
    if kind in ("", "response.completed", "response.incomplete", "response.failed") and (
        isinstance(status, str) and status not in ("in_progress", "queued")
    ):
        ex.finish_reasons.append(status)


def _text_of(choice: dict[str, Any]) -> str | None:
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else None
