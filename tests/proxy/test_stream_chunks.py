"""The stream relay's shortcut for the common chunk reads what the general path reads.

Most events of a stream are chunks in the middle of an answer; :func:`note_plain_chunk`
reads them with a typed decode instead of building and walking the whole object. It
must note exactly what :func:`note_chunk` notes, and take the shortcut only for chunks
the relay passes on unchanged (no finish, no usage, no Responses or Ollama fields).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.exchange import Exchange
from proxy.gate import Window
from proxy.schema import note_chunk, note_plain_chunk


def _exchange() -> Exchange:
    return Exchange(
        request_id="r",
        method="POST",
        path="/v1/chat/completions",
        endpoint="chat/completions",
        headers={},
        window=Window(arrived_s=0.0),
        arrived_at=dt.datetime.now(dt.UTC),
        gated=True,
    )


def _noted(ex: Exchange) -> dict[str, Any]:
    return {
        "response_id": ex.response_id,
        "model_served": ex.model_served,
        "response_text": ex.response_text,
        "prompt_tokens": ex.prompt_tokens,
        "completion_tokens": ex.completion_tokens,
        "backend_timings": ex.backend_timings,
        "finish_reasons": list(ex.finish_reasons),
    }


scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "stop"])
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("abc"), inner),
    max_leaves=4,
)
delta = (
    st.dictionaries(
        st.sampled_from(["content", "role", "tool_calls", "reasoning_content"]),
        values | st.text(max_size=3),
    )
    | values
)
choice = st.dictionaries(
    st.sampled_from(["index", "delta", "text", "finish_reason", "message", "logprobs"]),
    delta | st.text(max_size=3),
)
TOP_KEYS = [
    "id",
    "model",
    "object",
    "created",
    "usage",
    "timings",
    "type",
    "response",
    "message",
    "eval_count",
    "prompt_eval_count",
    "done_reason",
    "system_fingerprint",
]
chunk = st.dictionaries(
    st.sampled_from(TOP_KEYS),
    values | st.sampled_from(["chat.completion.chunk", "response", "chatcmpl-1"]),
).flatmap(
    lambda top: (
        st.lists(choice | values, max_size=3).map(lambda cs: {**top, "choices": cs}) | st.just(top)
    )
)


@settings(max_examples=400, deadline=None)  # what is noted matters, not how fast (a loaded CI)
@given(chunk, st.booleans())
def test_the_shortcut_notes_what_the_general_path_notes(obj: dict[str, Any], collect: bool) -> None:
    data = json.dumps(obj).encode()
    fast, slow = _exchange(), _exchange()
    fast.response_id = slow.response_id = None
    has_text = note_plain_chunk(fast, data, collect)
    slow_text, slow_finish = note_chunk(slow, json.loads(data), collect)
    if has_text is None:
        assert _noted(fast) == _noted(_exchange())  # declined: noted nothing
        return
    # Taken only where the relay passes the event on as it came.
    assert not slow_finish
    assert obj.get("choices") and obj.get("type") is None and obj.get("usage") is None
    assert has_text == slow_text
    assert _noted(fast) == _noted(slow)


LLAMA_SERVER = (
    b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" the"}}],"created":1,'
    b'"id":"chatcmpl-a","model":"smollm2","system_fingerprint":"b1-x",'
    b'"object":"chat.completion.chunk"}'
)
OPENAI_WITH_USAGE_NULL = (
    b'{"id":"chatcmpl-b","object":"chat.completion.chunk","created":1,"model":"gpt",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],'
    b'"usage":null}'
)
COMPLETIONS = b'{"id":"cmpl-c","object":"text_completion","choices":[{"text":"4","index":0}]}'


def test_the_chunks_servers_send_mid_answer_take_the_shortcut() -> None:
    for data, text in ((LLAMA_SERVER, " the"), (OPENAI_WITH_USAGE_NULL, "Hi"), (COMPLETIONS, "4")):
        ex = _exchange()
        assert note_plain_chunk(ex, data, collect=True) is True
        assert ex.response_text == text


def test_the_end_of_an_answer_takes_the_general_path() -> None:
    finish = LLAMA_SERVER.replace(b'"finish_reason":null', b'"finish_reason":"stop"')
    timings = LLAMA_SERVER[:-1] + b',"timings":{"prompt_n":3,"predicted_n":9}}'
    usage = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}'
    for data in (finish, timings, usage, b"[1]", b"not json"):
        assert note_plain_chunk(_exchange(), data) is None
