"""How big a request's prompt is, from its body alone (no tokenizer).

Both the forecast (before the backend has counted anything) and the meters (placing
a stream's prefill in time before its usage arrives) need the same rough size: the
characters of text in the body's ``messages`` and prompt fields, and how many
messages a chat template will wrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4.0
"""The prompt-size approximation: about four characters a token for English text."""

_TEXT_FIELDS = ("prompt", "input", "instructions", "system", "suffix")


def prompt_size(body: Mapping[str, Any] | None) -> tuple[int, int]:
    """(characters of text, messages) of a request body's prompt."""
    if not body:
        return 0, 0
    chars, messages = _chars(body.get("messages"))
    for name in _TEXT_FIELDS:
        c, m = _chars(body.get(name))
        chars, messages = chars + c, messages + m
    return chars, messages


def _chars(value: Any) -> tuple[int, int]:
    """Characters of text in a body field and the messages in it."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = messages = 0
        for item in value:
            if isinstance(item, dict):
                messages += "role" in item
                for key in ("content", "text"):
                    c, m = _chars(item.get(key))
                    chars, messages = chars + c, messages + m
            else:
                c, m = _chars(item)
                chars, messages = chars + c, messages + m
        return chars, messages
    return 0, 0
