"""Per-user energy and carbon budgets per UTC day or month.

A budget caps a user's energy (stored in joules, set in Wh) and/or CO2e
(grams) over the current UTC day or calendar month. Spending is the sum of the
ledger's ``energy_j`` and ``co2e_g`` for rows whose arrival time falls in the
period, the same rows a report for that period adds up, on every joulegate
sharing the ledger. The running totals of every user for the current day and
month are kept in memory, so checking a request costs no query: this host's
own rows are loaded at start-up and added as each is recorded, the other
hosts' are re-read in the background every ``budgets.refresh_s``. A request
is admitted while anything is left; the one that crosses the limit finishes,
and the next is refused with 429.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from accounting.ledger import Ledger
from accounting.ledger.rows import LedgerRow, iso, utcnow
from config.errors import BudgetExceeded
from config.units import J_PER_WH

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")


@dataclass(frozen=True, slots=True)
class Budget:
    """One user's limits; None means no limit of that kind."""

    user: str
    period: Period
    energy_j: float | None = None
    co2e_g: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """What is left of a user's budget now."""

    budget: Budget
    spent_energy_j: float
    spent_co2e_g: float
    resets_at: dt.datetime

    @property
    def remaining_energy_j(self) -> float | None:
        """Energy left, never negative; None without an energy limit."""
        b = self.budget.energy_j
        return None if b is None else max(0.0, b - self.spent_energy_j)

    @property
    def remaining_co2e_g(self) -> float | None:
        """CO2e left, never negative; None without a carbon limit."""
        b = self.budget.co2e_g
        return None if b is None else max(0.0, b - self.spent_co2e_g)

    @property
    def exhausted(self) -> Literal["energy", "carbon"] | None:
        """Which limit is used up, if any."""
        if self.remaining_energy_j == 0.0:
            return "energy"
        if self.remaining_co2e_g == 0.0:
            return "carbon"
        return None

    def remaining_headers(self) -> dict[str, str]:
        """What is left and when it resets, as response headers."""
        out = {"x-energy-budget-reset": iso(self.resets_at)}
        if self.remaining_energy_j is not None:
            out["x-energy-budget-remaining-wh"] = f"{self.remaining_energy_j / J_PER_WH:.4f}"
        if self.remaining_co2e_g is not None:
            out["x-carbon-budget-remaining-g"] = f"{self.remaining_co2e_g:.4f}"
        return out

    def to_json(self) -> dict[str, Any]:
        """The budget's limits, use and remainder in Wh and gCO2e (``GET /v1/energy/budget``)."""
        b = self.budget
        return {
            "user": b.user,
            "period": b.period,
            "resets_at": iso(self.resets_at),
            "limit_wh": _wh(b.energy_j),
            "used_wh": _wh(self.spent_energy_j),
            "remaining_wh": _wh(self.remaining_energy_j),
            "limit_co2e_g": _g(b.co2e_g),
            "used_co2e_g": _g(self.spent_co2e_g),
            "remaining_co2e_g": _g(self.remaining_co2e_g),
            "exhausted": self.exhausted,
        }

    def headers(self, now: dt.datetime) -> dict[str, str]:
        """Response headers telling the client what is left and when it resets (and,
        once a limit is used up, when to retry)."""
        out = self.remaining_headers()
        if self.exhausted:
            # Honest: nothing changes before the reset. The official SDKs obey
            # x-should-retry over Retry-After, so they give up at once instead of
            # sleeping until the reset (openai-node would sleep for hours).
            out["retry-after"] = str(max(1, math.ceil((self.resets_at - now).total_seconds())))
            out["x-should-retry"] = "false"
        return out

    def refusal(self, now: dt.datetime) -> BudgetExceeded:
        """The 429 for a user whose budget is used up."""
        b = self.budget
        if self.exhausted == "energy":
            limit_wh = (b.energy_j or 0.0) / J_PER_WH
            what = (f"{self.spent_energy_j / J_PER_WH:.4g} Wh of the {limit_wh:.4g} Wh "
                    f"{_ADJ[b.period]} energy budget")  # fmt: skip
            code = "energy_budget_exceeded"
        else:
            what = (f"{self.spent_co2e_g:.4g} g of the {b.co2e_g or 0.0:.4g} gCO2e "
                    f"{_ADJ[b.period]} carbon budget")  # fmt: skip
            code = "carbon_budget_exceeded"
        return BudgetExceeded(
            f"user {b.user!r} has used {what}; it resets at {iso(self.resets_at)}",
            code=code,
            headers=self.headers(now),
        )


def _wh(energy_j: float | None) -> float | None:
    return None if energy_j is None else round(energy_j / J_PER_WH, 9)


def _g(co2e_g: float | None) -> float | None:
    return None if co2e_g is None else round(co2e_g, 9)


def check_limit(value: object, name: str) -> float | None:
    """A budget limit as given (None: no limit of that kind), or ValueError naming
    ``name``: limits are finite numbers above 0. The CLI and the admin API share it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number above 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number above 0")
    return float(value)


def new_budget(
    user: str, period: str, energy_wh: float | None, co2e_g: float | None, names: tuple[str, str]
) -> Budget:
    """A budget from what an operator gave (Wh and grams), or ValueError: a period of
    ``day`` or ``month`` and at least one limit. ``names`` are the limits' names as the
    caller spells them (``--energy-wh`` or ``energy_wh``), for the message."""
    if period not in PERIODS:
        raise ValueError(f"period must be 'day' or 'month', not {period!r}")
    if energy_wh is None and co2e_g is None:
        raise ValueError(f"give {names[0]} and/or {names[1]}")
    energy_j = None if energy_wh is None else energy_wh * J_PER_WH
    return Budget(user, period, energy_j, co2e_g)


_ADJ = {"day": "daily", "month": "monthly"}
_NOT_MINE = "(host IS NULL OR host <> ?)"
"""Rows another host recorded (rows from before the ``host`` column have none)."""


def period_bounds(period: Period, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start (inclusive) and end (exclusive) of the UTC day or month containing ``now``."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


_Totals = defaultdict[str, list[float]]


def _totals() -> dict[Period, _Totals]:
    return {p: defaultdict(lambda: [0.0, 0.0]) for p in PERIODS}


class BudgetBook:
    """Budgets from the ``budgets`` table and every user's spending this day and month.

    Spending is kept in two parts. This host's own rows (``host`` = the book's host)
    are loaded at start-up and then added as each is recorded, so they count at once
    and exactly. The rows other joulegates record in a shared ledger are re-read by
    :meth:`refresh` (the server calls it every ``budgets.refresh_s``, off the request
    path), so a check sees them at most that stale. A book without a host (the CLI)
    counts every row as its own and has nothing to refresh.
    """

    def __init__(self, ledger: Ledger, *, host: str | None = None) -> None:
        self._ledger = ledger
        self.host = host
        """This joulegate's name in the ``host`` column; None: the only writer."""
        self.budgets: dict[str, Budget] = {}
        self._starts: dict[Period, str] = {}
        self._current: tuple[dt.datetime, dt.datetime] | None = None
        """The instants between which ``_starts`` holds (no period starts inside)."""
        self._own = _totals()
        self._others = _totals()

    async def load(self, now: dt.datetime | None = None) -> None:
        """Read the budgets and this period's spending of every user from the ledger."""
        now = now or utcnow()
        await self.load_budgets()
        self._roll(now)
        for period in PERIODS:
            start = self._starts[period]
            if self.host is None:
                own = await self._sums(start, "TRUE", ())
                others: dict[str, list[float]] = {}
            else:
                own = await self._sums(start, "host = ?", (self.host,))
                others = await self._sums(start, _NOT_MINE, (self.host,))
            for totals, read in ((self._own, own), (self._others, others)):
                totals[period].clear()
                totals[period].update(read)

    async def refresh(self, now: dt.datetime | None = None) -> None:
        """Re-read what other hosts spent this period, for the users with a budget."""
        if self.host is None:
            return
        self._roll(now or utcnow())
        for period in PERIODS:
            users = [u for u, b in self.budgets.items() if b.period == period]
            if not users:
                continue
            start = self._starts[period]
            marks = ", ".join("?" * len(users))
            read = await self._sums(
                start, f"{_NOT_MINE} AND user IN ({marks})", (self.host, *users)
            )
            if self._starts[period] != start:  # the period rolled over while we read
                continue
            others = self._others[period]
            for user in users:
                others[user] = read.get(user, [0.0, 0.0])

    async def _sums(
        self, start: str, where: str, params: tuple[str, ...]
    ) -> dict[str, list[float]]:
        rows = await self._ledger.fetchall(
            "SELECT user, TOTAL(energy_j), TOTAL(co2e_g) FROM requests"  # noqa: S608
            f" WHERE ts >= ? AND {where} GROUP BY user",
            (start, *params),
        )
        return {user: [energy_j, co2e_g] for user, energy_j, co2e_g in rows}

    async def load_budgets(self) -> None:
        """(Re)read the limits (the CLI or another host may have changed them)."""
        rows = await self._ledger.fetchall("SELECT user, period, energy_j, co2e_g FROM budgets")
        self.budgets = {r[0]: Budget(r[0], r[1], r[2], r[3]) for r in rows}

    def _roll(self, now: dt.datetime) -> None:
        if self._current is not None and self._current[0] <= now < self._current[1]:
            return  # every request checks this: work the periods out once per day
        bounds = [period_bounds(period, now) for period in PERIODS]
        self._current = (max(b[0] for b in bounds), min(b[1] for b in bounds))
        for period, (begins, _) in zip(PERIODS, bounds, strict=True):
            start = iso(begins)
            if self._starts.get(period) != start:
                self._starts[period] = start
                self._own[period].clear()
                self._others[period].clear()

    def add(self, row: LedgerRow, now: dt.datetime | None = None) -> None:
        """Count a row this host recorded towards its user's spending."""
        self._roll(now or utcnow())
        for period in PERIODS:
            if row.ts >= self._starts[period]:
                spent = self._own[period][row.user]
                spent[0] += row.energy_j or 0.0
                spent[1] += row.co2e_g or 0.0

    def has(self, user: str) -> bool:
        """Whether ``user`` has a budget."""
        return user in self.budgets

    def status(self, user: str, now: dt.datetime | None = None) -> BudgetStatus | None:
        """What is left of ``user``'s budget; None when they have none."""
        budget = self.budgets.get(user)
        if budget is None:
            return None
        now = now or utcnow()
        energy_j, co2e_g = self.spent(user, budget.period, now)
        return BudgetStatus(budget, energy_j, co2e_g, period_bounds(budget.period, now)[1])

    def spent(
        self, user: str, period: Period, now: dt.datetime | None = None
    ) -> tuple[float, float]:
        """``(energy_j, co2e_g)`` used by ``user`` in the current period, on every host."""
        self._roll(now or utcnow())
        own = self._own[period].get(user, (0.0, 0.0))
        others = self._others[period].get(user, (0.0, 0.0))
        return own[0] + others[0], own[1] + others[1]

    async def set(self, budget: Budget) -> None:
        """Store a user's budget (replacing any earlier one)."""
        await self._ledger.write(
            "INSERT INTO budgets (user, period, energy_j, co2e_g, updated_ts)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user) DO UPDATE SET period = excluded.period,"
            " energy_j = excluded.energy_j, co2e_g = excluded.co2e_g,"
            " updated_ts = excluded.updated_ts",
            (budget.user, budget.period, budget.energy_j, budget.co2e_g, iso(utcnow())),
        )
        self.budgets[budget.user] = budget

    async def clear(self, user: str) -> bool:
        """Remove a user's budget; whether they had one."""
        removed = await self._ledger.write("DELETE FROM budgets WHERE user = ?", (user,))
        self.budgets.pop(user, None)
        return removed > 0
