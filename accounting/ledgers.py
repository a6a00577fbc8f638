"""Which ledger ``[ledger]`` asks for: the SQLite file, or PostgreSQL when ``url`` says so."""

from __future__ import annotations

from pathlib import Path

from accounting.ledger import Ledger
from accounting.ledger_pg import PostgresLedger
from config import LedgerSettings

AnyLedger = Ledger | PostgresLedger
"""Either ledger: both have the same interface."""


def ledger_from_settings(s: LedgerSettings) -> AnyLedger:
    """``postgresql://...`` in ``ledger.url`` → :class:`PostgresLedger`, else the SQLite file."""
    if s.url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(
            s.url,
            buffer_rows=s.buffer_rows,
            fallback_path=Path(s.fallback_path).expanduser() if s.fallback_path else None,
            retry_s=s.retry_s,
        )
    return Ledger.from_settings(s)
