"""Which ledger ``[ledger]`` asks for: the SQLite file, or PostgreSQL when ``url`` says so."""

from __future__ import annotations

from pathlib import Path

from accounting.ledger.contract import Ledger
from accounting.ledger.postgres import PostgresLedger
from accounting.ledger.sqlite import SqliteLedger
from config import LedgerSettings


def ledger_from_settings(s: LedgerSettings) -> Ledger:
    """``postgresql://...`` in ``ledger.url`` → :class:`PostgresLedger`, else the SQLite file."""
    if s.url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(
            s.url,
            buffer_rows=s.buffer_rows,
            fallback_path=Path(s.fallback_path).expanduser() if s.fallback_path else None,
            retry_s=s.retry_s,
        )
    return SqliteLedger.from_settings(s)
