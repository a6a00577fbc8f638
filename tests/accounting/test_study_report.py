"""The study says what it found (issue 30): the conclusion first, the warnings, the
SCI split, the methods, the estimate's range and model in the dataset, readable plots,
and output under the user's data folder."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from accounting.study.cli import default_folder
from accounting.study.findings import find
from accounting.study.plots import clipped_errors, label_colour
from accounting.study.prompts import Prompt
from accounting.study.runner import Baseline, Planned, row_from_answer
from accounting.study.summary import METRICS, summarise
from config import LedgerSettings
from proxy.cli import main
from tests.support.fake_backend import FakeBackend, serving
from tests.support.study import model_energy, row

MODELS = ("m1", "m2")


def baseline(idle_power_w: float) -> Baseline:
    return Baseline("m1", idle_power_w, "estimate", True, "t", floor_w=10.0, full_w=20.0)


def test_the_conclusion_names_the_winner_its_ratio_and_whether_the_intervals_overlap() -> None:
    rows = [row("m1", "code", 1.0 + 0.1 * (i % 3), i) for i in range(12)]
    rows += [row("m2", "code", 3.0 + 0.1 * (i % 3), i) for i in range(12)]
    rows += [row(m, "sql", 2.0 + 0.5 * (i % 2), i) for m in MODELS for i in range(12)]
    found = find(summarise(rows, MODELS, ("code", "sql")), [], 4)
    code = next(w for w in found.winners if w.task == "code" and w.criterion.endswith("request"))
    assert (code.best, code.runner_up, code.overlap) == ("m1", "m2", False)
    assert code.ratio == pytest.approx(3.1 / 1.1)
    sql = next(w for w in found.winners if w.task == "sql" and w.criterion.endswith("request"))
    assert sql.overlap is True and sql.ratio == pytest.approx(1.0)
    assert found.paragraph.startswith("By energy per request, the most efficient model was m1")
    assert "the next model used 1.00x to 2.82x as much" in found.paragraph
    assert found.warnings == []  # 12 requests a cell, nothing hit the cap, no baseline


def test_warnings_for_small_cells_a_busy_machine_and_answers_cut_at_max_tokens() -> None:
    rows = [row("m1", "code", 1.0, i, finish="length") for i in range(3)]
    rows += [row("m2", "code", 2.0, i) for i in range(3)]
    found = find(summarise(rows, MODELS, ("code",)), [baseline(18.0), baseline(11.0)], 4)
    text = "\n".join(found.warnings)
    assert "2 of 2 cells have fewer than 10 requests (the fewest: 3)" in text
    assert "80% of the way from the estimate's idle floor (10 W) to full load (20 W)" in text
    assert text.count("busy with other work") == 1  # 11 W is an idle machine
    assert "m1 hit max_tokens (4) on 100% of its answers" in text and "m2 hit" not in text


def test_the_dataset_row_keeps_the_estimate_range_and_both_models() -> None:
    answer: dict[str, Any] = {
        "choices": [{"message": {"content": "x"}, "finish_reason": "length"}],
        "usage": {"completion_tokens": 4},
        "energy": {"energy_j": 2.0, "energy_range_j": [1.5, 2.5], "estimate_model": "ccf",
                   "embodied_model": "vm-share: 2 of 96"},
    }  # fmt: skip
    planned = Planned("m1", 1, Prompt("code", "code-001", "p"))
    r = row_from_answer(planned, answer, "id", 0.1, "ts", 4)
    assert (r.energy_low_j, r.energy_high_j, r.estimate_model) == (1.5, 2.5, "ccf")
    assert (r.embodied_model, r.finish_reason, r.max_tokens) == ("vm-share: 2 of 96", "length", 4)


def test_operational_co2e_per_1000_queries_says_it_leaves_embodied_out() -> None:
    title = next(m.title for m in METRICS if m.key == "co2e_g_per_1000_queries")
    assert title.startswith("Operational") and "embodied not included" in title


def test_heatmap_labels_follow_the_cell_luminance_and_intervals_stop_at_zero() -> None:
    assert label_colour((0.993, 0.906, 0.144, 1.0)) == "black"  # viridis' yellow end
    assert label_colour((0.267, 0.005, 0.329, 1.0)) == "white"  # its dark purple end
    assert clipped_errors(1.0, 3.0) == (1.0, 3.0, True)
    assert clipped_errors(5.0, 3.0) == (3.0, 3.0, False)


def test_the_default_folder_is_in_the_user_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    folder = default_folder()
    assert folder.parent == tmp_path / "joulegate" / "bench"
    assert not folder.is_relative_to(Path.cwd())


async def test_the_report_starts_with_the_conclusion_then_tables_plots_methods(
    joulegate_app: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    components = [accounting_resource, auth_component, model_energy, record_component]
    ledger = LedgerSettings(path=str(tmp_path / "l.sqlite3"))
    async with (
        serving(FakeBackend(models=MODELS)) as fake,
        joulegate_app(fake.url, components, ledger=ledger) as jg,
    ):
        argv = ["bench", "--url", jg.url, "--out", str(out), "--no-progress",
                "--tasks", "code,sql", "--prompts", "3", "--repeats", "1",
                "--max-tokens", "4", "--load-probe-s", "0.2"]  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
    printed = capsys.readouterr().out
    # The CPU probe ran before each model (joulegate is on loopback) and is in the methods.
    baselines = json.loads((out / "summary.json").read_text())["baselines"]
    assert [0.0 <= b["cpu_busy_share"] <= 1.0 for b in baselines] == [True, True]
    assert "% busy over 0.2 s, nothing sent" in printed and "cpu_probe_s" in str(baselines)
    assert printed.startswith("By energy per request, the most efficient model was m1 in 2 of 2")
    assert printed.index("WARNING: 4 of 4 cells have fewer than 10") < printed.index(
        "Energy per request (J), estimated"
    )
    assert "hit max_tokens (4) on 100%" in printed
    # The dynamic part is reported on its own, not only the totals.
    assert "Dynamic energy per request (above the idle baseline) (J), estimated" in printed
    split = next(line for line in printed.splitlines() if line.startswith("SCI per request (g)"))
    assert split.split()[4:] == ["operational", "E", "x", "I", "embodied", "M", "total",
                                 "operational", "share"]  # fmt: skip

    report = (out / "report.html").read_text()
    order = [
        report.index(h)
        for h in (
            "<h2>Conclusion",
            "class='warning'",
            "<h2>Tables",
            "operational share",
            "<h2>Plots",
            "<h2>Methods",
        )
    ]
    assert order == sorted(order)
    assert "estimate model: ccf-vcpu average + 0.392 W/GB" in report
    assert "embodied model: vm-share: 2 of 96 host vCPUs" in report
    for name in ("sci_heatmap.svg", "joules_per_token.svg", "sci_split.svg"):
        assert (out / name).stat().st_size > 0

    with (out / "dataset.csv").open() as f:
        first = next(csv.DictReader(f))
    energy_j = float(first["energy_j"])
    assert float(first["energy_low_j"]) == pytest.approx(0.8 * energy_j)
    assert float(first["energy_high_j"]) == pytest.approx(1.2 * energy_j)
    assert first["estimate_model"] and first["embodied_model"].startswith("vm-share")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conclusion"].startswith("By energy per request")
    assert {w["best"] for w in summary["winners"]} == {"m1"}
    # Small cells, the cap and (the test machine may be busy: the probe is real) its load.
    told = [w for w in summary["warnings"] if "CPUs were" not in w]
    assert len(told) == 3 and summary["methods"][0].startswith("protocol:")
    cell = summary["metrics"]["energy_low_j"]["cells"][0]
    assert cell["mean"] > 0
