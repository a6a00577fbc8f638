"""Carbon, SCI, the per-user ledger, budgets and reports.

What other packages use: the :class:`Ledger` (the SQLite file and its degraded
mode), the :class:`LedgerRow` it records per request, and the ledger's
timestamp helpers :func:`iso` and :func:`utcnow`. The stages, routes and CLI
are wired in by their own modules (``accounting.ledger_stage``,
``accounting.carbon``, ``accounting.routes``, ``accounting.cli``).
"""

from accounting.ledger import Ledger
from accounting.schema import COLUMNS, LedgerRow, iso, utcnow

__all__ = ["COLUMNS", "Ledger", "LedgerRow", "iso", "utcnow"]
