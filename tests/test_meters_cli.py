"""``joulegate meters``: what was found and live readings in W."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from tests.meters_support import fake_proc, rapl_tree


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
