"""The ledger wing: one row per request, committed before the answer's last byte.

What other packages use: the :class:`Ledger` contract, its two implementations
(:class:`SqliteLedger`, :class:`PostgresLedger`), :func:`ledger_from_settings`, the
:class:`LedgerRow` and the timestamp helpers :func:`iso` and :func:`utcnow`. The stage
(``accounting.ledger.stage``) and the HTTP routes (``accounting.ledger.routes``) are
wired in by the app.

| module | what |
|---|---|
| ``contract`` | the :class:`Ledger` protocol callers type against |
| ``rows`` | the row, the SQLite schema and its migrations |
| ``spilling`` | the base both ledgers share: the fallback file and degraded mode |
| ``spill`` | the fallback file itself |
| ``sqlite``, ``sqlite_thread`` | the SQLite file and its writer thread |
| ``postgres`` | PostgreSQL, its schema and the SQL dialect translation |
| ``choose`` | which ledger the settings ask for |
| ``stage``, ``routes`` | the pipeline stage that records each request; ``/v1/energy/*`` |
| ``owners`` | several gateways on one ledger: no machine served by two |
"""

from accounting.ledger.choose import ledger_from_settings
from accounting.ledger.contract import Ledger
from accounting.ledger.postgres import PostgresLedger
from accounting.ledger.rows import COLUMNS, LedgerRow, iso, utcnow
from accounting.ledger.sqlite import SqliteLedger

__all__ = [
    "COLUMNS",
    "Ledger",
    "LedgerRow",
    "PostgresLedger",
    "SqliteLedger",
    "iso",
    "ledger_from_settings",
    "utcnow",
]
