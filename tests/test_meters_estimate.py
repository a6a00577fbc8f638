"""The estimate: TDP table, utilisation from a fake /proc, board power while busy."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import MeterUnavailable
from meters.base import Activity
from meters.estimate import DEFAULT_TDP_W, EstimateMeter, load_tdp_table, lookup_tdp
from tests.meters_support import VirtualClock, fake_proc, set_busy


def test_bundled_table_lookup_prefers_the_longest_match() -> None:
    table = load_tdp_table()
    assert len(table) >= 30
    row = lookup_tdp("AMD EPYC 7763 64-Core Processor", table)
    assert row is not None and (row.tdp_w, row.threads) == (280.0, 128)
    row = lookup_tdp("13th Gen Intel(R) Core(TM) i9-13900K", table)
    assert row is not None and row.tdp_w == 125.0
    assert lookup_tdp("Intel(R) Xeon(R) Processor", table) is None


def test_cpu_energy_is_tdp_share_times_busy_cpu_seconds(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "Intel(R) Xeon(R) Platinum 8480+", busy=5000)
    meter = EstimateMeter(proc_root=proc, clock_ticks_per_s=100)
    # A VM seeing 4 of the part's 112 threads gets 4/112 of its 350 W.
    assert meter.cpu_tdp_w == pytest.approx(350 * 4 / 112)
    assert meter.read()["cpu"].energy_j == 0.0
    set_busy(proc, 5000 + 200)  # 2 CPU-seconds of work
    assert meter.read()["cpu"].energy_j == pytest.approx(2 * 350 / 112)
    assert meter.estimated and "estimated" in meter.describe()


def test_unknown_cpu_uses_85_w_and_configured_tdp_wins(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "Some Future CPU", busy=0)
    meter = EstimateMeter(proc_root=proc, clock_ticks_per_s=100)
    assert meter.cpu_tdp_w == DEFAULT_TDP_W and "not in the table" in meter.describe()
    set_busy(proc, 400)  # all 4 CPUs busy for one second: the full TDP for 1 s
    assert meter.read()["cpu"].energy_j == pytest.approx(85.0)
    configured = EstimateMeter(proc_root=proc, cpu_tdp_w=40.0, clock_ticks_per_s=100)
    assert configured.cpu_tdp_w == 40.0 and "meters.cpu_tdp_w" in configured.describe()


def test_gpu_board_power_counts_only_while_a_window_is_open(tmp_path: Path) -> None:
    clock = VirtualClock(0.0)
    activity = Activity(clock)
    meter = EstimateMeter(proc_root=fake_proc(tmp_path), gpu_board_power_w=300.0,
                          activity=activity, clock_ticks_per_s=100)  # fmt: skip
    assert meter.components == ("cpu", "gpu")
    clock.advance(5)
    assert meter.read()["gpu"].energy_j == 0.0
    activity.begin(clock.t)
    clock.advance(2)
    assert meter.read()["gpu"].energy_j == pytest.approx(600.0)
    activity.end(clock.t)
    clock.advance(10)
    assert meter.read()["gpu"].energy_j == pytest.approx(600.0)


def test_no_proc_stat_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="stat"):
        EstimateMeter(proc_root=tmp_path)
