"""What a forecast guarantees since issue 30, each defect it listed pinned: no negative
coefficient and no 0 J forecast, a first fit as soon as a bench has given its rows,
output tokens conditioned on ``max_tokens``, and ``--evaluate`` honest about thin cells."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from accounting import SqliteLedger
from accounting.forecast.fit import FitSet, Sample, fit_samples
from accounting.forecast.robust_fit import non_negative_solve
from accounting.forecast.stage import Forecaster, forecast_component
from accounting.ledger.rows import LedgerRow, iso
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import LedgerSettings
from proxy.cli import main
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import ENERGY_J, fake_energy
from tests.support.serving import JoulegateApp

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def sample(p: int, c: int, energy_j: float, *, model: str = "m", task: str = "chat",
           hit_cap: bool = False) -> Sample:  # fmt: skip
    return Sample(model, task, True, p, c, energy_j, energy_j * 0.2, 0.05 * c, hit_cap)


def falling_rows(model: str = "m") -> list[Sample]:
    """Nine rows where energy happens to fall with the prompt's length (noise on few rows)."""
    return [sample(p, 10 + (p % 7), 20.0 - 0.2 * (p - 40) + 0.15 * (p % 7), model=model)
            for p in range(40, 130, 10)]  # fmt: skip


def test_no_coefficient_is_negative_and_a_long_prompt_is_not_forecast_at_zero() -> None:
    rows = falling_rows()
    x = np.array([[1.0, s.prompt_tokens, s.completion_tokens] for s in rows])
    ols = np.linalg.lstsq(x, [s.energy_j for s in rows], rcond=None)[0]
    assert ols[1] < -0.1  # unconstrained, energy falls 0.2 J per prompt token
    fs = fit_samples(rows)
    fit = fs.fit_for("m")
    assert fit is not None
    for lf in (fit.energy, fit.energy_dynamic, fit.duration):
        assert lf is not None and min(lf.a, lf.b, lf.c) >= 0.0
    long = fs.predict("m", "chat", 400, 16).energy_j
    assert long is not None and long.p50 >= min(s.energy_j for s in rows) * 0.5
    assert 0.0 < long.low <= long.p50 <= long.high


def test_the_non_negative_solve_meets_its_optimality_conditions() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = np.column_stack([np.ones(12), rng.uniform(0, 100, 12), rng.uniform(0, 50, 12)])
        y = x @ rng.normal(0, 1, 3) + rng.normal(0, 5, 12)
        a, g = x.T @ x, x.T @ y
        beta = non_negative_solve(a, g)
        gradient = a @ beta - g  # of half the objective
        scale = 1e-7 * float(np.abs(g).max())
        assert np.all(beta >= 0)
        assert np.all(gradient >= -scale)  # no coefficient could go up and help
        assert np.all(np.abs(gradient[beta > 0]) <= scale)  # the free ones are at rest


def test_a_twenty_request_bench_never_gets_a_zero_or_negative_forecast() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for model in ("smollm2", "gemma3"):
        for i in range(20):  # ~19 J a request, noise larger than the token effects
            p, c = int(rng.integers(20, 60)), int(rng.integers(20, 129))
            energy = 15.0 + 0.02 * c + rng.normal(0, 3)
            rows.append(sample(p, c, energy, model=model, task=("code", "math")[i % 2],
                               hit_cap=c == 128))  # fmt: skip
    fs = fit_samples(rows)
    for model in ("smollm2", "gemma3"):
        for task in ("code", "math", None):
            for p in (1, 30, 500, 4000):
                for cap in (None, 1, 64, 128, 512):
                    e = fs.predict(model, task, p, cap).energy_j
                    assert e is not None and e.p50 > 0.0, (model, task, p, cap)
                    assert 0.0 < e.low <= e.p50 <= e.high  # no [0, ...] interval either


def test_answers_that_hit_a_smaller_cap_are_rescaled_to_the_requests() -> None:
    filled = [sample(30, 64, 10.0, hit_cap=True) for _ in range(10)]  # always hit 64
    fs = fit_samples(filled)
    bigger = fs.predict("m", "chat", 30, 128)
    assert bigger.completion_tokens is not None and bigger.completion_tokens.p50 == 128
    assert bigger.basis == "rescaled task history" and bigger.history_cap == 64
    smaller = fs.predict("m", "chat", 30, 32)
    assert smaller.completion_tokens is not None and smaller.completion_tokens.p50 == 32
    assert smaller.basis == "task history"
    uncapped = fs.predict("m", "chat", 30, None)
    assert uncapped.completion_tokens is not None and uncapped.completion_tokens.p50 == 64

    natural = fit_samples([sample(30, 25 + i, 10.0) for i in range(10)])  # ended on their own
    free = natural.predict("m", "chat", 30, 128)
    assert free.completion_tokens is not None and free.completion_tokens.p50 == 29.5
    assert free.basis == "task history" and free.history_cap is None


def test_a_small_history_is_refitted_at_its_minimum_then_after_each_request(
    tmp_path: Path,
) -> None:
    forecaster = Forecaster(SqliteLedger(tmp_path / "l.sqlite3"))  # refit_rows 200, as deployed
    for _ in range(7):
        forecaster.note_finished("m")
    assert not forecaster.refit_due  # seven rows: no fit could be made yet
    forecaster.note_finished("m")
    assert forecaster.refit_due  # the eighth: the first fit now, not after 200
    forecaster = Forecaster(SqliteLedger(tmp_path / "l.sqlite3"))
    forecaster.current = FitSet(rows=12, model_rows={"m": 12})
    forecaster.note_finished("m")
    assert forecaster.refit_due
    forecaster = Forecaster(SqliteLedger(tmp_path / "l.sqlite3"))
    forecaster.current = FitSet(rows=5_000, model_rows={"m": 5_000})
    forecaster.note_finished("m")
    assert not forecaster.refit_due  # a long history keeps the schedule
    forecaster = Forecaster(SqliteLedger(tmp_path / "l.sqlite3"))  # a new model, a big ledger
    forecaster.current = FitSet(rows=100_000, model_rows={"m": 12, "big": 99_988})
    for _ in range(11):
        forecaster.note_finished("m")
    assert not forecaster.refit_due  # a refit costs a second here: wait for it to double
    forecaster.note_finished("m")
    assert forecaster.refit_due


class CountingForecaster(Forecaster):
    """Counts the background refits instead of reading a ledger."""

    refits = 0

    async def refit(self) -> FitSet:
        self.refits += 1
        self._new_rows = 0
        return self.current


async def test_requests_finishing_close_together_share_one_background_refit(
    tmp_path: Path,
) -> None:
    # A small history is due a refit after each request: at several requests a second,
    # refitting back to back was a quarter of the proxy's CPU.
    forecaster = CountingForecaster(SqliteLedger(tmp_path / "l.sqlite3"))
    forecaster.current = FitSet(rows=12, model_rows={"m": 12})
    task = asyncio.create_task(forecaster.run())
    try:
        for _ in range(10):
            forecaster.note_finished("m")
            for _ in range(5):
                await asyncio.sleep(0)  # the refit loop runs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert forecaster.refits == 1  # the other nine wait for the next one


async def test_a_benchs_last_request_is_in_the_very_next_forecast(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    path = tmp_path / "l.sqlite3"
    comps = [accounting_resource, auth_component, fake_energy, forecast_component(),
             record_component]  # fmt: skip
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}
    async with (
        joulegate_app(fake.url, comps, ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        for n in range(1, 21):
            await c.post("/v1/chat/completions", json={**body, "max_tokens": n})
        forecast = (await c.post("/v1/energy/forecast", json={**body, "max_tokens": 20})).json()
    assert forecast["fit"]["rows"] == 20  # all twenty, at once: no ten-minute wait
    assert forecast["energy_j"]["p50"] == pytest.approx(ENERGY_J)


def calibration_rows() -> list[LedgerRow]:
    """Rows whose backend counted 26 tokens more than the approximation (a template)."""
    return [
        LedgerRow(request_id=f"cal-{i}", ts=iso(START + dt.timedelta(seconds=i)),
                  model_served="fake-model", status=200, prompt_tokens=10 * i + 26,
                  completion_tokens=5, energy_j=3.0 + i, duration_s=0.1,
                  request_params={"max_tokens": 5, "prompt_approx_tokens": 10 * i})
        for i in range(1, 13)
    ]  # fmt: skip


async def test_the_cli_and_the_endpoint_count_the_same_prompt_alike(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.append_many(calibration_rows())
    prompt = "w" * 400  # ~100 tokens by characters, +4 for the message, +26 the backend adds
    comps = [accounting_resource, auth_component, fake_energy, forecast_component(),
             record_component]  # fmt: skip
    async with (
        joulegate_app(fake.url, comps, ledger=LedgerSettings(path=str(path))) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        body = {"model": "fake-model", "messages": [{"role": "user", "content": prompt}]}
        endpoint = (await c.post("/v1/energy/forecast", json=body)).json()
    monkeypatch.setenv("JOULEGATE_BACKEND_URL", fake.url)
    argv = ["forecast", "--ledger", str(path), "--model", "fake-model", "--prompt", prompt,
            "--format", "json"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    cli = json.loads(capsys.readouterr().out)
    assert endpoint["prompt_tokens"] == cli["prompt_tokens"] == 104 + 26
    assert endpoint["prompt_tokens_source"] == cli["prompt_tokens_source"] == "approximation"


def test_evaluate_keeps_test_rows_for_every_model_and_warns_on_thin_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def row(i: int, model: str) -> LedgerRow:
        return LedgerRow(request_id=f"{model}-{i}", ts=iso(START + dt.timedelta(seconds=i)),
                         model_served=model, task="chat", status=200, prompt_tokens=20 + i,
                         completion_tokens=10 + i % 9, energy_j=5.0 + 0.1 * (i % 9),
                         duration_s=0.1)  # fmt: skip

    path = tmp_path / "l.sqlite3"
    first = [row(i, "benched-first") for i in range(30)]  # a global 70% cut trains on all
    later = [row(100 + i, "benched-later") for i in range(100)]
    asyncio.run(_append(path, first + later))
    assert main(["forecast", "--ledger", str(path), "--evaluate", "--format", "json"]) == 0
    done = capsys.readouterr()
    groups = {g["model"]: g for g in json.loads(done.out)["groups"]}
    assert groups["benched-first"]["test_rows"] == 9
    assert groups["benched-first"]["r2_actual_tokens"] is None  # 9 rows: no R² printed
    assert "fewer than 10" in groups["benched-first"]["warning"]
    assert "benched-first / chat" in done.err and "warning" in done.err
    assert groups["benched-later"]["test_rows"] == 30
    assert groups["benched-later"]["warning"] is None
    assert groups["benched-later"]["r2_actual_tokens"] is not None


async def _append(path: Path, rows: list[LedgerRow]) -> None:
    async with SqliteLedger(path) as ledger:
        await ledger.append_many(rows)


def test_a_model_that_always_fills_its_cap_costs_more_at_a_larger_cap() -> None:
    # Gemma on the demo ran every answer to max_tokens 64: the output column never
    # varied, and taken as a fixed cost the forecast at 128 was the same as at 64.
    rows = [sample(20 + i, 64, 400.0 + 2.0 * i, hit_cap=True) for i in range(20)]
    fs = fit_samples(rows)
    at_64, at_128 = fs.predict("m", "chat", 30, 64), fs.predict("m", "chat", 30, 128)
    assert at_64.energy_j is not None and at_128.energy_j is not None
    assert at_64.energy_j.p50 == pytest.approx(np.mean([s.energy_j for s in rows]), rel=0.05)
    assert at_128.energy_j.p50 == pytest.approx(2 * at_64.energy_j.p50, rel=0.1)
