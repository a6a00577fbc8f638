"""Carbon, SCI, the per-user ledger, budgets and reports."""
