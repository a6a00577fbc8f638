"""``joulegate bench``: statistics, prompts, the protocol and resume, against the fake
backend with joulegate in process (its ledger checked row by row)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from accounting.study.cli import measure, study_prompts
from accounting.study.dataset import read_rows
from accounting.study.prompts import bundled_prompts, load_prompt_file, select
from accounting.study.runner import Progress, StudySettings
from accounting.study.stats import confidence_interval, linear_fit, mean, t_quantile
from config import LedgerSettings, StudyAborted, StudyError
from proxy.cli import main
from proxy.context import AppContext
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from proxy.task import BUNDLED_TASKS
from tests.support.fake_backend import FakeBackend, serving
from tests.support.figures import record_fake_measurement
from tests.support.ledger import db_rows
from tests.support.serving import JoulegateApp

MODELS = ("m1", "m2")


class StudyEnergy(Stage):
    """Stands for the meters and carbon stages: 0.5 J + 0.25 J per output token."""

    name = "study-energy"

    async def on_finished(self, ex: Exchange) -> None:
        if not ex.gated:
            return
        tokens = ex.completion_tokens or 0
        energy_j = 0.5 + 0.25 * tokens
        record_fake_measurement(
            ex, energy_j=energy_j, dynamic_j=0.25 * tokens, components_j={"cpu": energy_j},
            estimated=True, idle_power_w=5.0,
        )  # fmt: skip
        assert ex.energy_j is not None
        co2e_g = ex.energy_j * 400.0 / 3.6e6
        ex.carbon = CarbonFigures(
            source="static", intensity_g_per_kwh=400.0, co2e_g=co2e_g, sci_g=co2e_g * 2,
            sci_operational_g=co2e_g, sci_embodied_g=co2e_g,
            sci_g_per_token=co2e_g * 2 / tokens if tokens else None,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def study_energy(ctx: AppContext) -> AsyncIterator[Stage]:
    yield StudyEnergy()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    async with serving(FakeBackend(models=MODELS)) as backend:
        yield backend


def chats(fake: FakeBackend) -> list[tuple[str, str, str]]:
    """(model, task header, prompt) of every chat request the backend saw."""
    return [(s.json()["model"], s.headers.get("x-joulegate-task", ""),
             s.json()["messages"][0]["content"])
            for s in fake.seen if s.path == "/v1/chat/completions"]  # fmt: skip


# -- statistics ----------------------------------------------------------------------


def test_t_quantiles_match_the_tables() -> None:
    for df, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)


def test_mean_and_95_percent_interval_of_a_hand_computed_example() -> None:
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445, half = 2.776445 * s / sqrt(5)
    e = confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (e.n, e.mean) == (5, 3.0)
    assert e.half_width == pytest.approx(1.963243, abs=1e-6)
    assert (e.low, e.high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    one = confidence_interval([7.0])
    assert (one.mean, one.low, one.high) == (7.0, 7.0, 7.0)
    assert math.isnan(mean([]))


def test_a_perfect_line_has_r2_one() -> None:
    fit = linear_fit([1, 2, 3, 4], [0.5 + 0.25 * x for x in (1, 2, 3, 4)])
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((0.25, 0.5, 1.0))
    assert linear_fit([0, 1, 2], [1, 0, 1]).r2 == pytest.approx(0.0)


# -- prompts -------------------------------------------------------------------------


def test_the_bundled_task_sets_have_fifty_distinct_prompts_each() -> None:
    prompts = bundled_prompts()
    per_task = Counter(p.task for p in prompts)
    assert tuple(per_task) == BUNDLED_TASKS
    assert min(per_task.values()) >= 50
    assert len({p.text for p in prompts}) == len(prompts)
    assert len({p.id for p in prompts}) == len(prompts)


def test_an_unknown_task_is_named() -> None:
    with pytest.raises(StudyError, match=r"unknown task 'poetry'.*code, math"):
        select(bundled_prompts(), ["code", "poetry"], 5)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "p.jsonl",
            '{"task": "a", "prompt": "x"}\n\n{"task": "a", "prompt": \n',
            "line 3: not JSON",
        ),
        (
            "p.jsonl",
            '{"task": "a", "prompt": "x"}\n{"task": "A B", "prompt": "y"}\n',
            "line 2: task",
        ),
        ("p.jsonl", '{"task": "a", "prompt": "x", "max_tokens": 0}\n', "line 1: max_tokens"),
        ("p.csv", "task,prompt\na,hello\nb,\n", "line 3: prompt is missing"),
        ("p.csv", "task,text\na,hello\n", "line 1: the header lacks prompt"),
    ],
)
def test_a_malformed_prompt_file_names_the_line(tmp_path: Path, name: str, text: str,
                                                 match: str) -> None:  # fmt: skip
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(StudyError, match=match):
        load_prompt_file(path)


def test_a_csv_prompt_file_with_its_own_max_tokens(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text('task,prompt,max_tokens\nsummary,"Sum up: a, b",3\nsummary,Again,\n')
    prompts = load_prompt_file(path)
    assert [(p.task, p.id, p.text, p.max_tokens) for p in prompts] == [
        ("summary", "summary-001", "Sum up: a, b", 3),
        ("summary", "summary-002", "Again", None),
    ]


# -- the command against joulegate ---------------------------------------------------


def bench_argv(url: str, out: Path, *extra: str) -> list[str]:
    # No CPU probe: it would add its seconds to every test, and warn when the suite is busy.
    return ["bench", "--url", url, "--out", str(out), "--no-progress", "--load-probe-s", "0",
            *extra]  # fmt: skip


async def test_unknown_model_is_one_line_before_any_request(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with joulegate_app(fake.url) as jg:
        argv = bench_argv(jg.url, tmp_path / "s", "--models", "m1,nope", "--prompts", "1")
        code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "'nope'" in err and "m1, m2" in err
    assert chats(fake) == [] and not (tmp_path / "s" / "dataset.jsonl").exists()


async def test_unknown_task_and_bad_prompt_file_exit_2_before_any_request(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "prompt": "x"}\nnot json\n')
    async with joulegate_app(fake.url) as jg:
        task = await asyncio.to_thread(main, bench_argv(jg.url, tmp_path / "a", "--tasks", "poems"))
        task_err = capsys.readouterr().err
        file = await asyncio.to_thread(
            main, bench_argv(jg.url, tmp_path / "b", "--prompt-file", str(bad)))  # fmt: skip
        file_err = capsys.readouterr().err
    assert (task, file) == (2, 2)
    assert "unknown task 'poems'" in task_err and "line 2" in file_err
    assert chats(fake) == []


async def test_a_study_records_every_request_in_the_dataset_and_the_ledger(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = tmp_path / "l.sqlite3"
    out = tmp_path / "study"
    components = [accounting_resource, auth_component, study_energy, record_component]
    async with joulegate_app(fake.url, components, ledger=LedgerSettings(path=str(ledger))) as jg:
        argv = bench_argv(jg.url, out, "--tasks", "code,sql", "--prompts", "3", "--repeats", "2",
                          "--max-tokens", "4", "--seed", "3")  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
    printed = capsys.readouterr().out

    rows = read_rows(out / "dataset.jsonl")
    assert len(rows) == 2 * 2 * 3 * 2
    assert len({r.key for r in rows}) == len(rows)
    sent = chats(fake)
    assert Counter(t for _, t, _ in sent) == {"warmup": 2, "code": 12, "sql": 12}
    assert [m for m, _, _ in sent] == ["m1"] * 13 + ["m2"] * 13  # one model after the other
    # Each repeat is its own shuffle of the same prompts, the same order for both models.
    m1 = [p for m, t, p in sent if m == "m1" and t != "warmup"]
    m2 = [p for m, t, p in sent if m == "m2" and t != "warmup"]
    assert m1 == m2 and sorted(m1[:6]) == sorted(m1[6:]) and Counter(m1) == {p: 2 for p in m1}

    ledger_rows = {r["request_id"]: r for r in db_rows(ledger)}
    for r in rows:
        recorded = ledger_rows[r.request_id]
        assert recorded["task"] == r.task and recorded["model_requested"] == r.model
        assert recorded["energy_j"] == pytest.approx(r.energy_j, abs=1e-6)
        assert r.energy_components_j == {"cpu": r.energy_j} and r.response
    assert sorted(r["task"] for r in ledger_rows.values()) == ["code"] * 12 + ["sql"] * 12 + [
        "warmup"] * 2  # fmt: skip

    summary = json.loads((out / "summary.json").read_text())
    for cell in summary["metrics"]["energy_j"]["cells"]:
        mine = [r.energy_j for r in rows if (r.model, r.task) == (cell["model"], cell["task"])]
        assert cell["n"] == 6 and cell["mean"] == pytest.approx(sum(mine) / 6)
    assert summary["energy_vs_tokens"]["m1"] is None  # every answer had 4 tokens: no line
    assert summary["baselines"][0]["idle_power_w"] == 5.0
    csv_lines = (out / "dataset.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows) and "energy_cpu_j" in csv_lines[0]
    for name in ("report.html", "sci_heatmap.png", "sci_heatmap.svg", "joules_per_token.png",
                 "energy_vs_tokens.svg"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    assert "Energy per request (J)" in printed and "harness overhead:" in printed
    assert "- meters: fake; every energy figure is estimated" in printed
    assert "- carbon: static at 400 gCO2e/kWh" in printed


class FailAfter(httpx.AsyncBaseTransport):
    """Passes requests to the network until ``chats`` chat requests went through, then
    fails like a backend that died."""

    def __init__(self, chats: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._left = chats

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            if self._left == 0:
                raise httpx.ConnectError("connection refused", request=request)
            self._left -= 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_resume_sends_exactly_the_missing_requests(
    fake: FakeBackend,
    joulegate_app: JoulegateApp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "study"
    settings = StudySettings(models=MODELS, tasks=("math", "translation"), prompts_per_task=2,
                             repeats=2, max_tokens=3)  # fmt: skip
    components = [accounting_resource, auth_component, study_energy, record_component]
    ledger = LedgerSettings(path=str(tmp_path / "l.sqlite3"))
    async with joulegate_app(fake.url, components, ledger=ledger) as jg:
        # Warm-up plus 5 counted requests, then joulegate is gone.
        with pytest.raises(StudyAborted, match="stopped answering"):
            await measure(jg.url, None, settings, study_prompts(settings), out, Progress(),
                          transport=FailAfter(6))  # fmt: skip
        first = read_rows(out / "dataset.jsonl")
        before = len(chats(fake))
        argv = [
            "bench",
            "--url",
            jg.url,
            "--out",
            str(out),
            "--resume",
            "--no-progress",
            "--load-probe-s",
            "0",
        ]
        assert await asyncio.to_thread(main, argv) == 0
        clash = await asyncio.to_thread(main, [*argv, "--repeats", "5"])
    assert clash == 2 and "--repeats 5 differs" in capsys.readouterr().err
    assert len(first) == 5
    resumed = chats(fake)[before:]
    rows = read_rows(out / "dataset.jsonl")
    assert len(rows) == 2 * 2 * 2 * 2 and len({r.key for r in rows}) == len(rows)
    assert [r.key for r in rows[:5]] == [r.key for r in first]
    # The rest, and only the rest: one warm-up per model that still had work, no repeats.
    counted = [(m, p) for m, t, p in resumed if t != "warmup"]
    assert len(counted) == len(rows) - len(first)
    assert Counter(t for _, t, _ in resumed)["warmup"] == 2
    expected = Counter((r.model, r.prompt) for r in rows[5:])
    assert Counter(counted) == expected
    assert sum(1 for line in (out / "dataset.csv").read_text().splitlines()) == 1 + len(rows)


async def test_interrupted_dataset_keeps_whole_rows_only(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    good = (
        '{"model":"m","task":"t","prompt_id":"t-001","repeat":1,"prompt":"p","response":"r",'
        '"prompt_tokens":1,"completion_tokens":2,"duration_s":0.1,"client_s":0.2,'
        '"energy_j":1.0,"energy_dynamic_j":0.5,"request_id":"x",'
        '"ts":"2025-01-01T00:00:00Z"}'
    )
    path.write_text(good + "\n" + good[:40])
    rows = read_rows(path)
    assert [r.request_id for r in rows] == ["x"]
