"""``joulegate bench`` against the real llama-server through a real joulegate: the
table is the mean of the dataset, and each dataset row is the ledger's row."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from accounting.study.dataset import read_rows
from tests.e2e.conftest import GEMMA, MODEL, Joulegate


def test_a_small_study_matches_the_ledger(
    start_joulegate: Callable[..., Joulegate], tmp_path: Path
) -> None:
    # This checkout's code in the child too, whatever `pip install -e` points at.
    jg = start_joulegate(PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = tmp_path / "study"
    argv = ["bench", "--url", jg.url, "--models", f"{MODEL},{GEMMA}", "--prompts", "2",
            "--repeats", "1", "--max-tokens", "8", "--out", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "proxy.cli", *argv], env=jg.env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = read_rows(out / "dataset.jsonl")
    assert len(rows) == 2 * 5 * 2
    assert {r.task for r in rows} == {"code", "math", "questions", "sql", "translation"}

    summary = json.loads((out / "summary.json").read_text())
    for key, value in (("energy_j", lambda r: r.energy_j), ("duration_s", lambda r: r.duration_s),
                       ("sci_g", lambda r: r.sci_g)):  # fmt: skip
        cells = summary["metrics"][key]["cells"]
        assert len(cells) == 10
        for cell in cells:
            mine = [value(r) for r in rows if (r.model, r.task) == (cell["model"], cell["task"])]
            assert cell["mean"] == pytest.approx(sum(mine) / len(mine), rel=1e-12)

    conn = sqlite3.connect(jg.env["JOULEGATE_LEDGER_PATH"])
    conn.row_factory = sqlite3.Row
    ledger = {r["request_id"]: dict(r) for r in conn.execute("SELECT * FROM requests")}
    conn.close()
    for r in rows:
        recorded = ledger[r.request_id]
        assert recorded["task"] == r.task and recorded["model_requested"] == r.model
        assert r.energy_j is not None and r.energy_j > 0
        assert recorded["energy_j"] == pytest.approx(r.energy_j, abs=1e-6)
        assert recorded["completion_tokens"] == r.completion_tokens
        assert recorded["duration_s"] == pytest.approx(r.duration_s, abs=1e-3)
    assert "harness overhead:" in done.stdout
    assert (out / "report.html").exists() and (out / "sci_heatmap.png").exists()
    # The conclusion comes first; the methods name the machine and the embodied model.
    assert done.stdout.startswith("By energy per request, the most efficient model was")
    assert all(r.embodied_model and r.finish_reason for r in rows)
    assert {recorded["embodied_model"] for recorded in ledger.values()} == {rows[0].embodied_model}
    methods = json.loads((out / "summary.json").read_text())["methods"]
    assert any(line.startswith("hardware: CPU ") for line in methods)
