"""RAPL from a fake powercap tree: zones, wraps, permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.errors import MeterError, MeterUnavailable
from meters.rapl import RaplMeter
from tests.support.meters import denying_reader, rapl_tree, set_energy, write_zone


def test_packages_and_dram_are_summed_and_duplicates_left_out(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path)
    meter = RaplMeter(root)
    assert meter.components == ("cpu", "dram")  # psys off by default, core and MMIO skipped
    first = meter.read()
    assert first["cpu"].energy_j == 0.0 and first["dram"].energy_j == 0.0
    set_energy(root / "intel-rapl:0", 10_000_000 + 3_000_000)  # +3 J on package 0
    set_energy(root / "intel-rapl:1", 10_000_000 + 1_500_000)  # +1.5 J on package 1
    set_energy(root / "intel-rapl:0" / "intel-rapl:0:1", 2_000_000 + 250_000)
    set_energy(root / "intel-rapl:0" / "intel-rapl:0:0", 9_999_999_999)  # core: inside package
    set_energy(root / "intel-rapl-mmio:0", 199_000_000)  # MMIO repeats the package
    later = meter.read()
    assert later["cpu"].energy_j == pytest.approx(4.5)
    assert later["dram"].energy_j == pytest.approx(0.25)
    assert "cpu (2 zones), dram (2 zones)" in meter.describe()


def test_psys_is_read_when_asked(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path)
    meter = RaplMeter(root, psys=True)
    assert meter.components == ("cpu", "dram", "psys")
    set_energy(root / "intel-rapl:2", 50_000_000 + 7_000_000)
    assert meter.read()["psys"].energy_j == pytest.approx(7.0)


def test_a_wrap_between_reads_is_unrolled(tmp_path: Path) -> None:
    zone = write_zone(tmp_path / "intel-rapl:0", "package-0", 990_000, range_uj=1_000_000)
    meter = RaplMeter(tmp_path)
    set_energy(zone, 995_000)
    assert meter.read()["cpu"].energy_j == pytest.approx(0.005)
    set_energy(zone, 4_000)  # wrapped: 5 000 to the top, then 4 000
    assert meter.read()["cpu"].energy_j == pytest.approx(0.014)
    set_energy(zone, 500_000)
    assert meter.read()["cpu"].energy_j == pytest.approx(0.510)


def test_poll_interval_allows_at_most_one_wrap(tmp_path: Path) -> None:
    write_zone(tmp_path / "intel-rapl:0", "package-0", 0, range_uj=65_532_610_987)  # AMD-like
    meter = RaplMeter(tmp_path)
    # 65.5 kJ at an assumed 1 kW wraps in 65 s: read at least twice as often.
    assert meter.max_poll_interval_s == pytest.approx(32.77, rel=1e-3)


def test_unreadable_counter_says_how_to_grant_access(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path, psys=False, mmio=False)
    denied = {p for p in root.rglob("energy_uj")}
    with pytest.raises(MeterUnavailable) as info:
        RaplMeter(root, read_text=denying_reader(denied))
    message = str(info.value)
    assert "intel-rapl:0/energy_uj" in message
    assert "chmod o+r" in message and "udev" in message


def test_one_unreadable_zone_is_left_out_and_reported(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path, psys=False, mmio=False)
    dram = {root / "intel-rapl:0" / "intel-rapl:0:1" / "energy_uj",
            root / "intel-rapl:1" / "intel-rapl:1:1" / "energy_uj"}  # fmt: skip
    meter = RaplMeter(root, read_text=denying_reader(dram))
    assert meter.components == ("cpu",)
    assert len(meter.skipped) == 2 and "permission denied" in meter.skipped[0]


def test_a_counter_that_becomes_unreadable_fails_the_read(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path, psys=False, mmio=False)
    denied: set[Path] = set()
    meter = RaplMeter(root, read_text=denying_reader(denied))
    denied.add(root / "intel-rapl:1" / "energy_uj")
    with pytest.raises(MeterError, match="intel-rapl:1") as info:
        meter.read()
    assert isinstance(info.value.__cause__, PermissionError)


def test_counters_are_reread_through_kept_open_files(tmp_path: Path) -> None:
    zone = write_zone(tmp_path / "intel-rapl:0", "package-0", 1_000_000)
    meter = RaplMeter(tmp_path)
    # Move the counter file away and leave a decoy at its path: a meter that opens the
    # path on every read would see the decoy, one holding the file open keeps reading it.
    held = zone / "energy_uj.held"
    os.replace(zone / "energy_uj", held)
    (zone / "energy_uj").write_text("0\n")
    for step in range(1, 4):
        held.write_text(f"{1_000_000 + step * 250_000}\n")  # in place: same open file
        assert meter.read()["cpu"].energy_j == pytest.approx(0.25 * step)
    meter.close()


def test_no_tree_means_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        RaplMeter(tmp_path / "missing")
