"""HTTP for the whole-machine meters: one blocking client, errors translated here."""

from __future__ import annotations

from typing import Any

import httpx

from config.errors import MeterError


def new_client(timeout_s: float = 2.0) -> httpx.Client:
    """A client for polling a meter on the local network (no proxies from the environment)."""
    return httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False)


def get(client: httpx.Client, url: str) -> httpx.Response:
    """GET ``url``; any transport error or non-2xx status becomes MeterError."""
    try:
        response = client.get(url)
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise MeterError(f"{url} answered {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        raise MeterError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return response


def get_json(client: httpx.Client, url: str) -> Any:
    """GET ``url`` and parse its JSON body; a bad body becomes MeterError."""
    response = get(client, url)
    try:
        return response.json()
    except ValueError as exc:
        raise MeterError(f"{url} did not answer JSON: {exc}") from exc
