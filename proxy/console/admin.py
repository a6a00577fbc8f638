"""Admin: users, keys and budgets (admin keys only). Built on the HTTP admin API."""

from __future__ import annotations

from typing import Any


def route_handlers() -> list[Any]:
    """Admin's handlers (under the console's path)."""
    return []
