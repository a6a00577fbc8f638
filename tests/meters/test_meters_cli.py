"""``joulegate meters``: what was found and live readings in W."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.cli import main
from tests.support.meters import fake_proc, rapl_tree


def test_meters_command_lists_detection_and_prints_live_watts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rapl_tree(tmp_path / "powercap")
    config = tmp_path / "joulegate.toml"
    config.write_text(
        "[meters]\n"
        'kinds = ["rapl", "estimate"]\n'
        f'rapl_root = "{tmp_path / "powercap"}"\n'
        f'proc_root = "{fake_proc(tmp_path / "proc")}"\n'
        f'dmi_root = "{tmp_path / "dmi"}"\n'
    )
    assert main(["meters", "--config", str(config), "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "meters found (in detection order):" in out
    assert "  rapl: cpu (2 zones), dram (2 zones)" in out
    assert "  estimate: cpu 12.5 W TDP" in out
    assert "  ignoring estimate's cpu (rapl has it)" in out
    assert "live power in W (rapl; total = cpu + dram):" in out
    header, *rows = out.split("total = cpu + dram):\n")[1].strip().splitlines()
    assert header.split() == ["t", "(s)", "cpu", "dram", "total"]
    assert [row.split() for row in rows] == [["1", "0.0", "0.0", "0.0"], ["2", "0.0", "0.0", "0.0"]]


def test_meters_json_gives_detection_and_readings_as_one_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rapl_tree(tmp_path / "powercap")
    config = tmp_path / "joulegate.toml"
    config.write_text(f'[meters]\nkinds = ["rapl"]\nrapl_root = "{tmp_path / "powercap"}"\n')
    assert main(["meters", "--config", str(config), "--seconds", "2", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["found"][0].startswith("rapl: cpu (2 zones), dram (2 zones)")
    assert (report["meter"], report["estimated"]) == ("rapl", False)
    assert report["components"] == ["cpu", "dram"] == report["total_components"]
    assert report["readings"] == [
        {"t_s": 1, "power_w": {"cpu": 0.0, "dram": 0.0}, "total_w": 0.0},
        {"t_s": 2, "power_w": {"cpu": 0.0, "dram": 0.0}, "total_w": 0.0},
    ]
    assert report["failing"] == {}
