"""``joulegate bench --protocol ai-energy-score`` against the real llama-server through a
real joulegate: llama.cpp takes ``ignore_eos``, so every answer is exactly 10 tokens, and
on this machine (no NVML GPU) the rating is written and labelled indicative."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from accounting.study.aienergyscore_rating import MASTER_COLUMNS
from tests.e2e.conftest import GEMMA, MODEL, Joulegate


def test_the_protocol_writes_the_ratings_files_for_both_demo_models(
    start_joulegate: Callable[..., Joulegate], tmp_path: Path
) -> None:
    jg = start_joulegate(PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = tmp_path / "aes"
    argv = ["bench", "--protocol", "ai-energy-score", "--url", jg.url, "--models",
            f"{MODEL},{GEMMA}", "--prompts", "3", "--out", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "proxy.cli", *argv], env=jg.env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with (out / "master_results.csv").open(newline="") as f:
        rows = {r["model_name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {MODEL, GEMMA}
    for model, row in rows.items():
        assert tuple(row) == MASTER_COLUMNS
        assert (row["successful_prompts"], row["total_completion_tokens"]) == ("3", "30")
        assert float(row["wh_per_1000_queries"]) > 0
        summary = json.loads((out / model / "GPU_ENERGY_SUMMARY.json").read_text())
        rating = summary["joulegate"]
        assert rating["ignore_eos_sent"] is True and 1 <= rating["stars"] <= 5
        assert rating["label"].startswith("indicative, not comparable")
        assert not any("exactly 10 tokens" in r for r in rating["reasons"])
        wh = (out / model / "GPU_ENERGY_WH.txt").read_text()
        assert wh == f"{summary['total']:.2f}\n"
    assert done.stdout.count("indicative, not comparable") == 2
    # Each counted query is in the ledger as a 10-token text_generation request.
    conn = sqlite3.connect(jg.env["JOULEGATE_LEDGER_PATH"])
    tokens = [r[0] for r in conn.execute(
        "SELECT completion_tokens FROM requests WHERE task = 'text_generation'")]  # fmt: skip
    conn.close()
    assert tokens == [10] * 8  # two warm-ups and three queries per model
