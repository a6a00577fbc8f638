"""Pre-flight budgets: a request whose forecast cannot fit in what is left is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting import SqliteLedger
from accounting.budgets import Budget, BudgetBook
from accounting.forecast.fit import Prediction, fit_samples, sample_from_sql
from accounting.forecast.rows import fit_rows
from accounting.forecast.stage import Forecaster, ForecastStage
from config import BudgetSettings, LedgerSettings
from config.units import J_PER_WH
from proxy.exchange import Exchange
from proxy.gate import Window
from tests.support.fake_backend import FakeBackend, serving
from tests.support.forecast import (
    START,
    alias_rows,
    components,
    forecast_body,
    synthetic_rows,
)
from tests.support.ledger import db_rows
from tests.support.serving import JoulegateApp

FORECAST_J = 40.0 + 0.02 * 1004 + 0.5 * 3
"""About what the synthetic fit forecasts for ``forecast_body(max_tokens=3)``."""


async def seeded_with_budget(path: Path, energy_j: float) -> None:
    async with SqliteLedger(path) as ledger:
        await ledger.append_many(synthetic_rows())  # January: nothing spent this month
        await BudgetBook(ledger).set(Budget("anonymous", "month", energy_j=energy_j))


@pytest.mark.parametrize(
    ("budget_j", "preflight", "status"),
    [
        (FORECAST_J / 2, True, 429),  # the forecast's high end exceeds what is left
        (10 * FORECAST_J, True, 200),  # it fits
        (FORECAST_J / 2, False, 200),  # off by default: only a spent budget refuses
    ],
)
async def test_preflight_refuses_a_request_whose_forecast_exceeds_the_remaining_budget(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path,
    budget_j: float, preflight: bool, status: int,
) -> None:  # fmt: skip
    path = tmp_path / "l.sqlite3"
    await seeded_with_budget(path, budget_j)
    settings = {"budgets": BudgetSettings(preflight=True)} if preflight else {}
    async with (
        joulegate_app(
            fake.url, components(), ledger=LedgerSettings(path=str(path)), **settings
        ) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=forecast_body(max_tokens=3))
    assert r.status_code == status
    rows = db_rows(path, "request_id = ?", (r.headers["x-request-id"],))
    if status == 429:
        assert r.json()["error"]["code"] == "energy_budget_insufficient"
        assert r.headers["x-should-retry"] == "false"
        assert f"{budget_j / J_PER_WH:.4g} Wh" in r.json()["error"]["message"]
        assert rows == []  # refused before it queued: it used nothing, nothing is billed
    else:
        assert len(rows) == 1


def test_preflight_is_off_by_default() -> None:
    assert BudgetSettings().preflight is False


async def test_a_requested_alias_is_forecast_from_the_fit_made_under_the_served_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded_with_budget(path, 1.0)
    async with SqliteLedger(path) as ledger:
        f = Forecaster(ledger)
        await f.refit()
        body = forecast_body(max_tokens=3)
        assert f.predict("alias", None, body).energy_j is None  # not served under it yet
        f.note_served("alias", "fake-model")
        energy = f.predict("alias", None, body).energy_j
    assert energy is not None
    assert energy.p50 == pytest.approx(FORECAST_J, rel=0.05)


async def test_aliases_are_reloaded_from_the_ledger_so_a_restart_forecasts_them_at_once(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded_with_budget(path, 1.0)
    async with SqliteLedger(path) as ledger:
        # Served under another name first, then under the fitted one: the latest wins.
        await ledger.append_many([*alias_rows("old-name"), *alias_rows("fake-model", start=9)])
        fresh = Forecaster(ledger)
        await fresh.refit()
        assert await fresh.load_served() == 1
    assert fresh.served == {"alias": "fake-model"}
    listed = FakeBackend(models=("fake-model", "alias"))  # a backend that lists the alias
    async with (
        serving(listed) as backend,
        joulegate_app(backend.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post(
            "/v1/energy/forecast", json={**forecast_body(max_tokens=3), "model": "alias"}
        )
    f = r.json()
    assert f["basis"] == "task history" and f["fit"]["model"] == "fake-model"
    assert f["energy_j"]["p50"] == pytest.approx(FORECAST_J, rel=0.05)


def test_the_columnar_refit_matches_the_per_sample_fit() -> None:
    rows = [*synthetic_rows(), *synthetic_rows(60, seed=2, task="chat", estimated=True)]
    sql_rows = [
        (r.model_served, r.task, int(r.energy_estimated), r.prompt_tokens, r.completion_tokens,
         r.energy_j, r.energy_dynamic_j, r.duration_s)
        for r in rows
        if r.failure is None
    ]  # fmt: skip
    columnar = fit_rows(sql_rows, START)
    per_sample = fit_samples((sample_from_sql(r) for r in sql_rows), START)
    assert columnar.tokens == per_sample.tokens
    assert columnar.fits.keys() == per_sample.fits.keys()
    for key, fit in per_sample.fits.items():
        assert columnar.fits[key].energy.a == pytest.approx(fit.energy.a, rel=1e-9)
        assert columnar.fits[key].energy.c == pytest.approx(fit.energy.c, rel=1e-9)


class CountingForecaster(Forecaster):
    """A forecaster that counts its predictions."""

    calls = 0

    def predict(
        self, model: str, task: str | None, body: Mapping[str, Any] | None,
        prompt_tokens: int | None = None,
    ) -> Prediction:  # fmt: skip
        self.calls += 1
        return super().predict(model, task, body, prompt_tokens)


@pytest.mark.parametrize("loop_runs_first", [True, False], ids=["backend-slow", "backend-fast"])
@pytest.mark.parametrize("preflight", [True, False])
async def test_one_prediction_serves_the_preflight_check_and_the_forecast_figure(
    tmp_path: Path, preflight: bool, loop_runs_first: bool
) -> None:
    """One prediction per request, made by admission, whether the loop turns before the
    answer comes (a slow backend) or not (a fast one)."""
    path = tmp_path / "l.sqlite3"
    await seeded_with_budget(path, 10 * FORECAST_J)
    async with SqliteLedger(path) as ledger:
        forecaster = CountingForecaster(ledger)
        await forecaster.refit()
        book = BudgetBook(ledger)
        await book.load()
        stage = ForecastStage(forecaster, book if preflight else None)
        ex = Exchange(
            request_id="r1", method="POST", path="/v1/chat/completions",
            endpoint="chat/completions", headers={}, window=Window(arrived_s=0.0),
            arrived_at=dt.datetime.now(dt.UTC), gated=True, model_requested="fake-model",
            body=forecast_body(max_tokens=3),
        )  # fmt: skip
        await stage.on_arrival(ex)
        await stage.on_admitted(ex)
        if loop_runs_first:
            await asyncio.sleep(0)
            assert ex.forecast_made and forecaster.calls == 1
        await stage.on_finished(ex)
        # The answer is rendered right after on_finished, without the loop turning.
        assert ex.forecast_made and ex.forecast_energy_j is not None
        await asyncio.sleep(0)  # a prediction still pending would run (twice) now
    assert forecaster.calls == 1
    assert ex.forecast_made and ex.forecast_energy_j == pytest.approx(FORECAST_J, rel=0.05)
    assert ex.scratch == {}  # nothing left behind on the exchange
