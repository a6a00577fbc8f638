"""``joulegate bench --protocol ai-energy-score``: the rating's star rule against its own
published stars, its file formats, and a run through joulegate in front of the fake
backend, labelled indicative with its reasons."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from accounting.study.aienergyscore import (
    OUTPUT_TOKENS,
    _Tally,
    hardware_reasons,
    load_inputs,
    run,
    run_reasons,
)
from accounting.study.aienergyscore_rating import MASTER_COLUMNS, cohorts, leaderboard
from accounting.study.runner import Progress
from config import LedgerSettings
from proxy.cli import main
from proxy.context import AppContext
from proxy.exchange import Exchange, Stage
from tests.support.fake_backend import FakeBackend, serving
from tests.support.figures import record_fake_measurement
from tests.support.serving import JoulegateApp

H100 = "nvml: 1 GPU (NVIDIA H100 80GB HBM3), energy counter"
ENERGY_J = 7.2


class VmEnergy(Stage):
    """Stands for the meters on a VM without a GPU: 7.2 J a request, estimated."""

    name = "vm-energy"

    async def on_finished(self, ex: Exchange) -> None:
        if ex.gated:
            record_fake_measurement(ex, energy_j=ENERGY_J, dynamic_j=1.0,
                                    components_j={"cpu": ENERGY_J}, meter="estimate",
                                    estimated=True)  # fmt: skip


@contextlib.asynccontextmanager
async def vm_energy(ctx: AppContext) -> AsyncIterator[Stage]:
    yield VmEnergy()


def test_the_band_rule_gives_every_star_the_leaderboard_published() -> None:
    head, models = leaderboard()
    assert head["leaderboard"] == "2025-02" and head["retrieved"] == "2025-07-03"
    assert "huggingface.co/spaces/AIEnergyScore" in head["source"]
    ranges = cohorts()
    assert len(models) == 40
    for m in models:
        assert ranges[m["class"]].stars(m["wh_per_1000_queries"]) == m["stars"], m["model"]
    a = ranges["A"]
    assert (a.low_wh, a.high_wh, a.models) == (1.313333, 28.741175, 32)
    assert a.stars(0.5) == 5 and a.stars(1000.0) == 1  # beyond the range: the end bands


def test_the_master_results_header_is_the_ratings() -> None:
    # huggingface/AIEnergyScore results_aggregator.py, column for column.
    assert MASTER_COLUMNS == (
        "model_name", "model_class", "task", "reasoning_state", "total_prompts",
        "successful_prompts", "failed_prompts", "total_duration_seconds", "avg_total_time",
        "avg_time_to_first_token", "total_tokens", "total_prompt_tokens",
        "total_completion_tokens", "throughput_tokens_per_second", "gpu_energy_wh",
        "wh_per_1000_queries", "co2_emissions_g", "tokens_per_joule",
        "avg_energy_per_prompt_wh", "timestamp", "error_message",
    )  # fmt: skip


def protocol_args(tmp_path: Path, **more: object) -> argparse.Namespace:
    values: dict[str, object] = {"models": None, "api_key": None, "model_class": "A",
                                 "prompt_file": None, **more}  # fmt: skip
    return argparse.Namespace(**values)


async def test_a_run_writes_the_ratings_files_labelled_indicative(
    joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    comps = [accounting_resource, auth_component, vm_energy, record_component]
    out = tmp_path / "aes"
    inputs = load_inputs(None)[:5]
    async with (
        serving(FakeBackend(owned_by="llamacpp")) as fake,
        joulegate_app(fake.url, comps, ledger=LedgerSettings(path=str(tmp_path / "l.sqlite3")))
        as jg,
    ):  # fmt: skip
        lines = await run(jg.url, protocol_args(tmp_path), inputs, out, Progress())
    sent = [s.json() for s in fake.seen if s.path == "/v1/completions"]
    assert len(sent) == 1 + 5  # the warm-up, then each input once, one at a time
    assert all(b["max_tokens"] == OUTPUT_TOKENS and b["ignore_eos"] is True for b in sent)
    assert [b["prompt"] for b in sent[1:]] == inputs

    run_dir = out / "fake-model"
    assert (run_dir / "GPU_ENERGY_WH.txt").read_text() == "0.01\n"  # 5 x 7.2 J, two decimals
    summary = json.loads((run_dir / "GPU_ENERGY_SUMMARY.json").read_text())
    assert summary["units"] == "Wh" and summary["total"] == pytest.approx(5 * ENERGY_J / 3600)
    rating = summary["joulegate"]
    assert rating["stars"] == 5 and rating["comparable"] is False
    assert rating["label"].startswith("indicative, not comparable: ")
    reasons = " | ".join(rating["reasons"])
    for why in ("no NVIDIA GPU metered", "5 queries, not the rating's 1,000",
                "bundled sample inputs", "no NVML GPU energy"):  # fmt: skip
        assert why in reasons

    with (out / "master_results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == MASTER_COLUMNS
    row = rows[0]
    assert (row["total_prompts"], row["successful_prompts"], row["failed_prompts"]) == (
        "5", "5", "0",
    )  # fmt: skip
    assert row["gpu_energy_wh"] == "0.0100" and row["wh_per_1000_queries"] == "2.0000"
    assert row["total_tokens"] == str(5 * (7 + 10)) and row["total_completion_tokens"] == "50"
    assert row["tokens_per_joule"] == f"{85 / 36:.4f}" and row["error_message"] == ""
    assert "fake-model" in lines[0] and "indicative" in lines[0] and "★★★★★" in lines[0]


def test_only_one_h100_metered_by_nvml_with_the_full_protocol_is_comparable() -> None:
    assert hardware_reasons([H100], "A") == []
    assert "not the rating's NVIDIA H100" in hardware_reasons(
        ["nvml: 1 GPU (NVIDIA A100-SXM4-40GB), energy counter"], "A"
    )[0]  # fmt: skip
    assert "2 GPUs metered" in hardware_reasons(
        ["nvml: 2 GPUs (NVIDIA H100 80GB HBM3), energy counter"], "B"
    )[0]  # fmt: skip
    assert hardware_reasons(["estimate: 2 vCPUs"], "A")[0].startswith("no NVIDIA GPU")

    tally = _Tally()
    gpu = {"meter": "nvml", "estimated": False, "energy_j": 2.5}
    for _ in range(1000):
        tally.add({"energy": {"energy_j": 9.0, "meter": "nvml+rapl", "exclusive": True,
                              "components": {"gpu": gpu, "cpu": {"energy_j": 6.5}}},
                   "usage": {"prompt_tokens": 30, "completion_tokens": 10}}, 0.1)  # fmt: skip
    assert tally.energy_j == pytest.approx(2500.0)  # the GPU's energy, not the machine's
    assert run_reasons(tally, 1000, from_file=True) == []
    tally.add({"energy": {"energy_j": 9.0, "exclusive": False, "components": {"gpu": gpu}},
               "usage": {"prompt_tokens": 30, "completion_tokens": 4}}, 0.1)  # fmt: skip
    reasons = " | ".join(run_reasons(tally, 1001, from_file=True))
    assert "1 of 1001 answers were not exactly 10 tokens" in reasons
    assert "overlapped other requests" in reasons and "1001 queries" in reasons


def test_inputs_come_from_a_text_or_prompt_field_in_json_lines_or_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"prompt": "two"}\n', encoding="utf-8")
    assert load_inputs(jsonl) == ["one", "two"]
    table = tmp_path / "t.csv"
    table.write_text('text\n"a, b"\nc\n', encoding="utf-8")
    assert load_inputs(table) == ["a, b", "c"]
    assert len(load_inputs(None)) >= 20  # the bundled demo sample


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--max-tokens", "5"], "--max-tokens does not apply"),
        (["--repeats", "2"], "--repeats does not apply"),
        (["--prompts", "0"], "--prompts must be at least 1"),
        (["--prompt-file", "BAD"], "line 1: not JSON"),
    ],
)
def test_the_protocol_refuses_what_it_fixes_in_one_line_with_exit_2(
    extra: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    extra = [str(bad) if e == "BAD" else e for e in extra]
    argv = ["bench", "--protocol", "ai-energy-score", "--url", "http://127.0.0.1:9",
            "--out", str(tmp_path / "o"), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
