"""Who used what: the ledger, keys and budgets, reports, carbon, forecasts and the study.

Two wings hold the larger capabilities, each with the same shape (its modules, a
``stage.py``, ``routes.py`` and ``cli.py`` where it has them):

- :mod:`accounting.ledger`: the :class:`Ledger` contract, the SQLite and PostgreSQL
  ledgers, rows, schema and migrations, the fallback file;
- :mod:`accounting.forecast`: the fit, its rows, the robust fit, the prompt-size
  calibration, the admission stage, the endpoint and the CLI.

Beside them: ``auth`` (keys and modes), ``budgets``, ``reports``, ``cli`` (the
ledger's commands), ``carbon/`` (intensity, SCI, its stage) and ``study/``
(``joulegate bench``).
"""

from accounting.ledger import COLUMNS, Ledger, LedgerRow, SqliteLedger, iso, utcnow

__all__ = ["COLUMNS", "Ledger", "LedgerRow", "SqliteLedger", "iso", "utcnow"]
