"""The forecast: a robust fit on a synthetic ledger, ``POST /v1/energy/forecast``, and
the forecast every inference response carries from admission."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from accounting import SqliteLedger
from accounting.forecast.fit import FitSet, ModelFit, Sample, fit_samples
from accounting.forecast.robust_fit import LinearFit
from accounting.forecast.stage import Forecaster, approx_prompt_tokens, forecast_component
from accounting.ledger.rows import LedgerRow, iso
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from accounting.reports import build_report, parse_query
from config import LedgerSettings
from proxy.cli import main
from tests.support.fake_backend import FakeBackend
from tests.support.forecast import (
    A_J,
    B_J,
    C_J,
    MODEL,
    START,
    components,
    forecast_body,
    seeded,
    synthetic_rows,
)
from tests.support.ledger import ENERGY_J, db_rows, fake_energy
from tests.support.serving import JoulegateApp, sse_events


def samples(rows: list[LedgerRow]) -> list[Sample]:
    return [
        Sample(MODEL, r.task, r.energy_estimated, r.prompt_tokens or 0,
               r.completion_tokens or 0, r.energy_j or 0.0, r.energy_dynamic_j, r.duration_s)
        for r in rows
        if r.failure is None
    ]  # fmt: skip


def test_the_fit_recovers_the_true_coefficients_despite_gross_outliers() -> None:
    fit = fit_samples(samples(synthetic_rows())).fit_for(MODEL)
    assert fit is not None and not fit.estimated
    e = fit.energy
    assert e.a == pytest.approx(A_J, rel=0.05)
    assert e.b == pytest.approx(B_J, rel=0.05)
    assert e.c == pytest.approx(C_J, rel=0.05)
    assert e.rows == 400 and e.r2 > 0.95
    # Plain least squares on the same rows is dragged far off by the six outliers.
    x = np.column_stack([np.ones(400), [s.prompt_tokens for s in samples(synthetic_rows())],
                         [s.completion_tokens for s in samples(synthetic_rows())]])  # fmt: skip
    ols = np.linalg.lstsq(x, [s.energy_j for s in samples(synthetic_rows())], rcond=None)[0]
    assert abs(ols[0] - A_J) / A_J > 0.2


def test_measured_and_estimated_rows_are_fitted_apart_and_measured_wins() -> None:
    rows = synthetic_rows() + synthetic_rows(seed=2, estimated=True, scale=3.0)
    fs = fit_samples(samples(rows))
    measured, estimated = fs.fits[(MODEL, False)], fs.fits[(MODEL, True)]
    assert estimated.energy.c == pytest.approx(3 * C_J, rel=0.05)
    assert measured.energy.c == pytest.approx(C_J, rel=0.05)
    assert fs.fit_for(MODEL) is measured
    only_estimated = fit_samples(samples(synthetic_rows(seed=2, estimated=True)))
    fit = only_estimated.predict(MODEL, "code", 100, None).fit
    assert fit is not None and fit.describe()["energy"] == "estimated"


def test_output_tokens_come_from_the_task_history_capped_by_max_tokens() -> None:
    fs = fit_samples(samples(synthetic_rows()))
    tokens = np.array([s.completion_tokens for s in samples(synthetic_rows())])
    p10, p50 = np.quantile(tokens, [0.1, 0.5])
    free = fs.predict(MODEL, "code", 1000, None)
    assert free.basis == "task history" and free.completion_tokens is not None
    assert (free.completion_tokens.low, free.completion_tokens.p50) == (p10, p50)
    assert free.energy_j is not None
    e = fs.fits[(MODEL, False)].energy
    assert free.energy_j.p50 == pytest.approx(e.a + e.b * 1000 + e.c * p50)
    assert free.energy_j.low < free.energy_j.p50 < free.energy_j.high
    capped = fs.predict(MODEL, "code", 1000, 50)
    assert capped.completion_tokens is not None and capped.completion_tokens.high == 50
    other = fs.predict(MODEL, "math", 1000, 64)
    assert other.basis == "max_tokens cap" and other.completion_tokens is not None
    assert other.completion_tokens.p50 == 64
    none = fs.predict(MODEL, "math", 1000, None)
    assert none.basis == "no history" and none.energy_j is None and none.reason


def test_the_interval_holds_the_median_even_when_the_fit_slopes_down() -> None:
    # Nine noisy rows can give a negative per-token slope and residual quantiles on one
    # side of zero (seen on the real server): the interval must still hold the median.
    slope_down = LinearFit(a=20.0, b=0.0, c=-2.0, r2=0.1, rows=9, residual_p10=0.5,
                           residual_p90=3.0)  # fmt: skip
    fit = ModelFit(MODEL, True, slope_down, None, slope_down, "2026-01-01T00:00:00.000000Z")
    fs = FitSet({(MODEL, True): fit}, {(MODEL, "*"): (2.0, 3.0, 4.0)})
    for figure in (fs.predict(MODEL, None, 30, None).energy_j,
                   fs.predict(MODEL, None, 30, None).duration_s):  # fmt: skip
        assert figure is not None
        assert (figure.low, figure.p50, figure.high) == (12.0, 14.0, 19.0)


def test_the_prompt_approximation_counts_characters_and_messages() -> None:
    parts = [{"type": "text", "text": "y" * 40}]
    chat = {
        "messages": [{"role": "user", "content": "x" * 400}, {"role": "user", "content": parts}]
    }
    assert approx_prompt_tokens(chat) == 110 + 8
    assert approx_prompt_tokens({"prompt": "z" * 401}) == 101


# -- through the app --------------------------------------------------------------


async def test_the_endpoint_forecasts_from_the_ledger_without_calling_the_model(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded(path, synthetic_rows())
    async with (
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/energy/forecast", json=forecast_body(max_tokens=100),
                         headers={"x-joulegate-task": "code"})  # fmt: skip
        in_body = await c.post("/v1/energy/forecast", json=forecast_body(task="code"))
    assert fake.seen == []  # never reached the backend
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["basis"] == "task history" and f["task"] == "code"
    assert f["prompt_tokens"] == 1004 and f["prompt_tokens_source"] == "approximation"
    assert f["completion_tokens"]["high"] == 100
    expected = A_J + B_J * 1004 + C_J * 100
    assert f["energy_j"]["p50"] == pytest.approx(expected, rel=0.03)
    assert f["energy_j"]["low"] < f["energy_j"]["p50"] < f["energy_j"]["high"]
    assert f["energy_dynamic_j"]["p50"] == pytest.approx(0.6 * expected, rel=0.03)
    assert f["duration_s"]["p50"] == pytest.approx(0.5 + 0.02 * 100, rel=0.01)
    # No carbon stage in this app: the world average, and it says so.
    assert f["carbon_source"] == "table:world-average"
    co2e = f["energy_j"]["p50"] * f["pue"] * f["carbon_intensity_g_per_kwh"] / 3.6e6
    assert f["co2e_g"]["p50"] == pytest.approx(co2e, rel=1e-5)
    assert f["sci_g"]["p50"] >= f["co2e_g"]["p50"]
    assert f["fit"]["rows"] == 400 and f["fit"]["energy"] == "measured"
    assert f["fit"]["r2"] > 0.95 and f["fit"]["fitted_at"].endswith("Z")
    assert in_body.json()["task"] == "code" and in_body.json()["basis"] == "task history"


async def test_no_history_is_200_with_nulls_and_a_reason(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    async with (
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/energy/forecast", json=forecast_body())
    assert r.status_code == 200
    f = r.json()
    assert f["basis"] == "no history" and "fewer than" in f["reason"]
    for name in ("completion_tokens", "energy_j", "energy_dynamic_j", "duration_s", "co2e_g",
                 "sci_g", "fit"):  # fmt: skip
        assert f[name] is None, name


async def test_unknown_models_and_malformed_bodies_are_refused_like_chat(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    async with (
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        unknown = await c.post("/v1/energy/forecast", json=forecast_body(model="nope"))
        broken = await c.post("/v1/energy/forecast", content=b"{not json",
                              headers={"content-type": "application/json"})  # fmt: skip
        no_prompt = await c.post("/v1/energy/forecast", json={"model": MODEL})
        bad_cap = await c.post("/v1/energy/forecast", json=forecast_body(max_tokens=-1))
        bad_task = await c.post("/v1/energy/forecast", json=forecast_body(task="No Way"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "messages"
    assert bad_cap.status_code == 400 and bad_cap.json()["error"]["param"] == "max_tokens"
    assert bad_task.status_code == 400 and bad_task.json()["error"]["code"] == "invalid_task"


async def test_every_response_carries_its_forecast_and_the_ledger_keeps_it(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    await seeded(path, synthetic_rows())
    chat = forecast_body(max_tokens=3)
    async with (
        joulegate_app(fake.url, components(), ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        whole = await c.post(
            "/v1/chat/completions", json=chat, headers={"x-joulegate-task": "code"}
        )
        cold = await c.post("/v1/chat/completions", json={**chat, "model": "other"})
        streamed = await c.post("/v1/chat/completions", json={**chat, "stream": True},
                                headers={"x-joulegate-task": "code"})  # fmt: skip
    expected = A_J + B_J * 1004 + C_J * 3
    assert whole.json()["energy"]["forecast_energy_j"] == pytest.approx(expected, rel=0.03)
    assert float(whole.headers["x-energy-forecast-j"]) == pytest.approx(expected, rel=0.03)
    assert cold.json()["energy"]["forecast_energy_j"] is None
    assert "x-energy-forecast-j" not in cold.headers
    # The backend counted that prompt as 7 tokens (the fake's usage), not the 1004 its
    # characters suggest: the next forecast sizes the same prompt as the backend does.
    last = [e for e in sse_events(streamed.content) if isinstance(e, dict) and "energy" in e]
    as_counted = A_J + B_J * 7 + C_J * 3
    assert last[-1]["energy"]["forecast_energy_j"] == pytest.approx(as_counted, rel=0.03)
    row = db_rows(path, "request_id = ?", (whole.headers["x-request-id"],))[0]
    assert row["forecast_energy_j"] == pytest.approx(expected, rel=0.03)


async def test_report_by_model_and_task_gives_the_forecasts_mean_absolute_percentage_error(
    tmp_path: Path,
) -> None:
    def row(i: int, forecast: float | None, **more: Any) -> LedgerRow:
        return LedgerRow(request_id=f"r{i}", ts=iso(START + dt.timedelta(seconds=i)),
                         model_served=MODEL, task="code", status=200, energy_j=100.0,
                         forecast_energy_j=forecast, **more)  # fmt: skip

    path = tmp_path / "l.sqlite3"
    # 10% and 20% off; a failed row and one without a forecast do not count.
    await seeded(path, [row(1, 110.0), row(2, 80.0), row(3, 5.0, failure="backend_timeout"),
                        row(4, None)])  # fmt: skip
    async with SqliteLedger(path) as ledger:
        by_model = await build_report(ledger, parse_query({"by": "model"}))
        by_task = await build_report(ledger, parse_query({"by": "task"}))
        by_user = await build_report(ledger, parse_query({"by": "user"}))
    line = by_model.to_json()["groups"][0]
    assert line["forecast_mape_pct"] == pytest.approx(15.0) and line["forecast_rows"] == 2
    assert by_model.to_json()["totals"]["forecast_mape_pct"] == pytest.approx(15.0)
    assert by_task.columns()[-1] == "forecast_mape_pct"
    assert by_task.to_table().splitlines()[4].split()[-1] == "15.0"
    assert "forecast_mape_pct" not in by_user.columns()
    assert "forecast_mape_pct" not in by_user.to_json()["groups"][0]


# -- joulegate forecast -------------------------------------------------------------


def test_the_cli_forecasts_one_request_and_evaluates_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "l.sqlite3"
    asyncio.run(seeded(path, synthetic_rows(outliers=2) + synthetic_rows(seed=3, task="math")))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("w" * 4000, encoding="utf-8")
    args = ["forecast", "--ledger", str(path), "--model", MODEL, "--task", "code"]
    assert main([*args, "--file", str(prompt), "--max-tokens", "100", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["basis"] == "task history" and out["prompt_tokens"] == 1004
    assert out["energy_j"]["p50"] == pytest.approx(A_J + B_J * 1004 + C_J * 100, rel=0.03)
    assert main([*args, "--prompt", "hello"]) == 0
    assert "task history" in capsys.readouterr().out
    assert main(["forecast", "--ledger", str(path), "--evaluate", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_rows"] == 560 and report["test_rows"] == 240
    code = next(g for g in report["groups"] if g["task"] == "code")
    assert code["r2_actual_tokens"] > 0.5 and code["forecast_rows"] == code["test_rows"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--model", MODEL], "--prompt TEXT or --file F"),
        (["--model", MODEL, "--prompt", "a", "--file", "f"], "--prompt TEXT or --file F"),
        (["--prompt", "a"], "give --model"),
        (["--model", MODEL, "--prompt", "a", "--max-tokens", "0"], "--max-tokens"),
        (["--model", MODEL, "--prompt", "a", "--task", "Bad Task"], "--task"),
        (["--evaluate", "--model", MODEL], "--evaluate takes no"),
        (["--model", MODEL, "--file", "/nonexistent/prompt"], "--file: cannot read"),
    ],
)
def test_the_cli_refuses_bad_input_in_one_line_with_exit_2(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["forecast", "--ledger", str(tmp_path / "l.sqlite3"), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


async def test_the_fit_is_refreshed_in_the_background_as_requests_finish(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    comps = [
        accounting_resource, auth_component, fake_energy, forecast_component(refit_rows=10),
        record_component,
    ]  # fmt: skip
    async with (
        joulegate_app(fake.url, comps, ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        before = (await c.post("/v1/energy/forecast", json=forecast_body())).json()
        for n in range(1, 11):  # the fake answers max_tokens tokens: they vary, energy does not
            await c.post("/v1/chat/completions", json=forecast_body(max_tokens=n))
        for _ in range(200):
            after = (await c.post("/v1/energy/forecast", json=forecast_body())).json()
            if after["basis"] != "no history":
                break
            await asyncio.sleep(0.02)
    assert before["basis"] == "no history"
    assert after["basis"] == "task history" and after["fit"]["rows"] == 10
    # Every prompt was the same length: no per-prompt-token slope is made up.
    assert after["fit"]["energy_j"]["b_per_prompt_token"] == 0.0
    assert after["energy_j"]["p50"] == pytest.approx(ENERGY_J)


@pytest.mark.parametrize(
    ("fitted_rows", "due_after"), [(0, 10), (50, 10), (1_000, 100), (200_000, 20_000)]
)
def test_a_refit_waits_for_a_tenth_more_rows_than_it_fitted(
    fitted_rows: int, due_after: int, tmp_path: Path
) -> None:
    # Reading costs each request ~10 rows however big the ledger is, not rows/refit_rows.
    forecaster = Forecaster(SqliteLedger(tmp_path / "l.sqlite3"), refit_rows=10)
    forecaster.current = FitSet(rows=fitted_rows)
    for _ in range(due_after - 1):
        forecaster.note_finished()
    assert not forecaster.refit_due
    forecaster.note_finished()
    assert forecaster.refit_due
