"""What a request's exchange tells about the work it did, for sharing overlapping windows.

:func:`work_of` turns an :class:`~proxy.Exchange` into the
:class:`~meters.attribution.Work` the attribution weighs, as known at a given
instant:

* **prompt tokens**: the backend's usage, else its timings' ``prompt_n``, else a
  rough count of the request body's text (about four characters a token), which
  is all there is while a stream is still in flight;
* **a streamed answer**: its token events; the prefill ends at the first token and
  starts at the admission, or ``prompt_s`` before the first token when the backend
  reported timings (it may have queued the request in its own slots first); a
  stream still in prefill (no token yet) is counted as prefilling until now;
* **a whole answer** with the backend's timings (llama-server's ``timings``):
  its bytes come at the end, so decode is placed in the last ``predicted_s`` of the
  window and prefill in the ``prompt_s`` before it;
* otherwise nothing is known of the work inside the window: a time share.
"""

from __future__ import annotations

import math
from typing import Any

from meters.attribution import Work
from proxy.exchange import Exchange
from proxy.prompt import CHARS_PER_TOKEN, prompt_size


class WorkOf:
    """A request's :class:`~meters.sharing.WorkSource`: :func:`work_of` with the rough
    prompt size counted once (the book asks at every split while the request runs).

    A whole answer in flight shows no work until it ends (its bytes and timings come
    with it), so until then its work is its span alone: one open-ended
    :class:`~meters.attribution.Work`, built once (the book only overlaps it with
    intervals that end by the split's instant), not one per split."""

    __slots__ = ("_approx", "_span", "ex", "start_s")

    def __init__(self, ex: Exchange, start_s: float) -> None:
        self.ex, self.start_s = ex, start_s
        self._approx: float | None = None
        self._span: Work | None = None

    def __call__(self, now_s: float) -> Work:
        """The work from the admission to ``now_s``."""
        ex = self.ex
        if not (ex.stream or ex.token_events or ex.backend_timings or ex.window.finished_s):
            if self._span is None:
                self._span = Work(self.start_s, math.inf)
            return self._span
        if self._approx is None:
            self._approx = approx_prompt_tokens(self.ex.body)
        return work_of(self.ex, self.start_s, now_s, self._approx)


def work_of(ex: Exchange, start_s: float, now_s: float, approx_prompt: float | None = None) -> Work:
    """``ex``'s work from ``start_s`` (its admission) to ``now_s`` (its end or now);
    ``approx_prompt``: :func:`approx_prompt_tokens` of its body, if counted already."""
    t = ex.backend_timings
    if approx_prompt is None and not (ex.prompt_tokens or (t and t.prompt_n)):
        approx_prompt = approx_prompt_tokens(ex.body)
    prompt = float(ex.prompt_tokens or (t and t.prompt_n) or approx_prompt or 0.0)
    if ex.token_events:
        first = ex.token_events[0][0]
        p0 = start_s if t is None or t.prompt_s is None else max(start_s, first - t.prompt_s)
        return Work(start_s, now_s, ex.token_events, prompt, first, prefill_start_s=p0)
    if t is not None and t.predicted_s is not None:
        decode_s = min(t.predicted_s, now_s - start_s)
        first = now_s - decode_s
        p0 = max(start_s, first - (t.prompt_s or 0.0))
        tokens = float(t.predicted_n or ex.completion_tokens or 0)
        return Work(start_s, now_s, (), prompt, first, prefill_start_s=p0,
                    decode_tokens=tokens, decode_end_s=now_s)  # fmt: skip
    if ex.stream and ex.window.finished_s is None:
        return Work(start_s, now_s, (), prompt, now_s)  # still prefilling
    return Work(start_s, now_s)


def approx_prompt_tokens(body: dict[str, Any] | None) -> float:
    """The prompt's tokens from its characters (:func:`proxy.prompt.prompt_size`; no
    tokenizer: only for placing prefill before the backend counts)."""
    return prompt_size(body)[0] / CHARS_PER_TOKEN
