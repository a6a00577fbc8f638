"""The forecast's refit reads the same fits from either ledger, SQLite or PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from accounting.forecast.fit import SAMPLE_SQL, fit_samples, sample_from_sql
from accounting.forecast.robust_fit import _median
from accounting.forecast.rows import fit_rows
from accounting.forecast.stage import Forecaster
from tests.support.forecast import A_J, C_J, MODEL, START, alias_rows, synthetic_rows
from tests.support.ledger import MakeLedger


async def test_a_refit_gives_the_same_fits_and_aliases_on_both_ledgers(
    make_ledger: MakeLedger,
) -> None:
    rows = [*synthetic_rows(), *synthetic_rows(60, seed=2, task="chat", estimated=True)]
    async with make_ledger() as ledger:
        await ledger.append_many([*rows, *alias_rows("old-name"), *alias_rows(MODEL, start=9)])
        forecaster = Forecaster(ledger)
        fs = await forecaster.refit()
        assert await forecaster.load_served() == 1
        # The reference: the same rows read plainly, fitted on the event loop.
        reference = fit_rows(list(await ledger.fetchall(SAMPLE_SQL)), START)
    assert forecaster.served == {"alias": MODEL}  # the latest served name
    assert fs.rows == 400 + 60  # the failed rows are not used, nor those without tokens
    assert fs.tokens == reference.tokens
    assert set(fs.tokens) == {(MODEL, "code"), (MODEL, "chat"), (MODEL, "*")}
    assert fs.fits.keys() == {(MODEL, False), (MODEL, True)}
    measured = fs.fits[(MODEL, False)]
    assert measured.energy.a == pytest.approx(A_J, rel=0.05)
    assert measured.energy.c == pytest.approx(C_J, rel=0.05)
    for key, fit in reference.fits.items():
        assert fs.fits[key].energy.a == pytest.approx(fit.energy.a, rel=1e-9)
        assert fs.fits[key].energy.c == pytest.approx(fit.energy.c, rel=1e-9)
        assert fs.fits[key].energy.residual_p90 == pytest.approx(fit.energy.residual_p90)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 1001])
def test_the_in_place_median_is_numpys(n: int) -> None:
    values = np.random.default_rng(n).normal(size=n)
    assert _median(values.copy()) == np.median(values)


def test_rows_without_a_task_share_one_token_history_with_the_per_sample_fit() -> None:
    tasks = [(None, 10), ("", 20), (None, 30), ("code", 40)] * 3
    sql_rows = [(MODEL, task, 0, 100, tokens, 50.0, None, 1.0) for task, tokens in tasks]
    columnar = fit_rows(sql_rows, START)
    assert columnar.tokens == fit_samples((sample_from_sql(r) for r in sql_rows), START).tokens
    assert columnar.tokens[(MODEL, "(none)")] == (10.0, 20.0, 30.0)  # all nine rows
    assert columnar.tokens[(MODEL, "code")] == (40.0, 40.0, 40.0)
