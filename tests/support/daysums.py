"""Random ledger rows for the per-day sums' tests: every case Compare's and the
report's sums meet (failures, unknown energy, no model served, no task, no SCI, zero
output tokens, estimates, forecasts or none), and random updates and deletes of them."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from accounting.ledger import Ledger, LedgerRow, iso

START = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
DAYS = 5


def _maybe(rng: random.Random, value: Any, p_none: float = 0.2) -> Any:
    return None if rng.random() < p_none else value


def random_ts(rng: random.Random) -> str:
    """A time within the test's days, to the microsecond (some exactly at midnight)."""
    day = START + dt.timedelta(days=rng.randrange(DAYS))
    if rng.random() < 0.05:
        return iso(day)
    return iso(day + dt.timedelta(seconds=rng.uniform(0, 86_400 - 1e-6)))


def random_row(rng: random.Random, n: int) -> LedgerRow:
    """Request ``n``: any mix of the columns Compare reads."""
    return LedgerRow(
        request_id=f"r{n}", ts=random_ts(rng), user=rng.choice(["alice", "bob", "user"]),
        endpoint="chat/completions", model_requested=_maybe(rng, rng.choice(["a", "c"])),
        model_served=_maybe(rng, rng.choice(["a", "b"]), 0.3),
        task=_maybe(rng, rng.choice(["code", "math"]), 0.3),
        energy_estimated=rng.random() < 0.3,
        failure=None if rng.random() < 0.85 else "backend_error",
        energy_j=_maybe(rng, rng.uniform(0.1, 5000.0), 0.1),
        sci_g=_maybe(rng, rng.uniform(0.0, 2.0)), co2e_g=_maybe(rng, rng.uniform(0.0, 1.5)),
        completion_tokens=rng.choice([None, 0, rng.randrange(1, 800), rng.randrange(1, 50)]),
        prompt_tokens=_maybe(rng, rng.randrange(0, 4000)),
        duration_s=_maybe(rng, rng.uniform(0.01, 60.0), 0.1),
        energy_dynamic_j=_maybe(rng, rng.uniform(0.0, 3000.0)),
        forecast_energy_j=_maybe(rng, rng.uniform(0.0, 5000.0), 0.5),
    )  # fmt: skip


async def fill(ledger: Ledger, rng: random.Random, rows: int) -> None:
    """``rows`` random rows, some one commit each (the record stage's way), the rest in
    batches (a replayed fallback file's), a few twice (replayed again: no change)."""
    made = [random_row(rng, n) for n in range(rows)]
    for row in made[: rows // 4]:
        await ledger.append(row)
    await ledger.append_many(made[rows // 4 :])
    await ledger.append_many(rng.sample(made, rows // 10))


async def churn(ledger: Ledger, rng: random.Random, ids: range, changes: int) -> None:
    """Random updates (any column Compare reads, or one it does not) and deletes."""
    for _ in range(changes):
        request_id = f"r{rng.choice(ids)}"
        other = random_row(rng, 0)
        pick = rng.random()
        if pick < 0.25:
            await ledger.write("DELETE FROM requests WHERE request_id = ?", (request_id,))
        elif pick < 0.35:
            await ledger.write("UPDATE requests SET endpoint = 'x' WHERE request_id = ?",
                               (request_id,))  # fmt: skip
        else:
            column = rng.choice(["ts", "user", "model_served", "model_requested", "task",
                                 "energy_estimated", "failure", "energy_j", "sci_g", "co2e_g",
                                 "completion_tokens", "prompt_tokens", "duration_s",
                                 "energy_dynamic_j", "forecast_energy_j"])  # fmt: skip
            value = getattr(other, column)
            await ledger.write(
                f"UPDATE requests SET {column} = ? WHERE request_id = ?",
                (int(value) if isinstance(value, bool) else value, request_id),
            )


def random_periods(rng: random.Random) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    """Periods over the test's days: whole days, parts of days, open ends, and random
    ones (a third of their ends at a midnight)."""

    def moment() -> dt.datetime:
        day = START + dt.timedelta(days=rng.randrange(-1, DAYS + 1))
        return day if rng.random() < 0.4 else day + dt.timedelta(seconds=rng.uniform(0, 86_400))

    out: list[tuple[dt.datetime | None, dt.datetime | None]] = [
        (None, None),
        (START, START + dt.timedelta(days=DAYS)),
        (START + dt.timedelta(hours=3), START + dt.timedelta(hours=20)),
        (START + dt.timedelta(hours=30), None),
        (None, START + dt.timedelta(days=2, minutes=1)),
    ]
    while len(out) < 30:
        a, b = sorted((moment(), moment()))
        if a < b:
            out.append((a, b))
    return out
