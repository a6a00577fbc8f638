"""A prompt's tokens counted by the backend's own tokenizer, where it has one to ask.

llama.cpp's server renders a chat with the model's own template
(``POST /apply-template``: ``{"messages": [...]}`` → ``{"prompt": "..."}``) and
tokenizes text (``POST /tokenize``: ``{"content": "..."}`` → ``{"tokens": [...]}``),
so a forecast made before the request runs can use the prompt size the backend will
report afterwards. Both are asked with a short timeout: a tokenizer that is slow,
down or missing costs the caller at most :data:`TOKENIZE_TIMEOUT_S` and gives None,
and the caller falls back to its approximation (and says which it used).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from proxy.backends import USER_AGENT

log = logging.getLogger("joulegate.backends")

TOKENIZE_TIMEOUT_S = 0.5
"""Limit for the whole look-up (template and tokenize together)."""
TOKENIZING_PROVIDERS = frozenset({"llama.cpp"})
"""The serving software (:attr:`proxy.backends.Backend.provider`) with ``/tokenize``."""


class _NoCount(Exception):
    """The backend's answer did not give a count (bad status or body)."""


async def _post(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> Any:
    r = await client.post(
        url, json=payload, headers={"user-agent": USER_AGENT}, timeout=TOKENIZE_TIMEOUT_S
    )
    if r.status_code != 200:
        raise _NoCount(f"{url} answered {r.status_code}")
    return r.json()


def _text_prompt(body: Mapping[str, Any]) -> str | list[int] | None:
    """A completions body's prompt: its text, or its token ids; None for anything else."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return str(prompt[0])
    return None


async def count_prompt_tokens(
    client: httpx.AsyncClient, base_url: str, body: Mapping[str, Any]
) -> int | None:
    """The prompt tokens of a chat or completions ``body`` as the llama.cpp server at
    ``base_url`` counts them; None when it cannot say in time (or the body is neither)."""
    try:
        async with asyncio.timeout(TOKENIZE_TIMEOUT_S):
            return await _count(client, base_url, body)
    except (TimeoutError, httpx.HTTPError, ValueError, _NoCount) as exc:
        log.debug("no token count from %s: %s: %s", base_url, type(exc).__name__, exc)
        return None


async def _count(client: httpx.AsyncClient, base_url: str, body: Mapping[str, Any]) -> int | None:
    if isinstance(messages := body.get("messages"), list):
        rendered = await _post(client, base_url + "/apply-template", {"messages": messages})
        text = rendered.get("prompt") if isinstance(rendered, dict) else None
        if not isinstance(text, str):
            raise _NoCount("/apply-template gave no prompt")
    else:
        prompt = _text_prompt(body)
        if prompt is None:
            return None
        if isinstance(prompt, list):
            return len(prompt)  # already token ids
        text = prompt
    answer = await _post(client, base_url + "/tokenize", {"content": text, "add_special": True})
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list):
        raise _NoCount("/tokenize gave no tokens")
    return len(tokens)
