"""The estimate: TDP table, utilisation from a fake /proc, board power while busy."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import MeterUnavailable
from meters.base import Activity
from meters.estimate import EstimateMeter, load_tdp_table, lookup_tdp
from meters.sampler import Sampler
from meters.vcpu import MEMORY_W_PER_GB, choose_coefficients, load_coefficients
from proxy.render import measurement_object
from tests.support.meters import VirtualClock, fake_proc, set_busy


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
    meter = EstimateMeter(proc_root=proc, dmi_root=proc / "dmi", clock_ticks_per_s=100)
    # A VM seeing 4 of the part's 112 threads gets 4/112 of its 350 W.
    assert meter.cpu_tdp_w == pytest.approx(350 * 4 / 112)
    assert meter.read()["cpu"].energy_j == 0.0
    set_busy(proc, 5000 + 200)  # 2 CPU-seconds of work
    assert meter.read()["cpu"].energy_j == pytest.approx(2 * 350 / 112)
    assert meter.estimated and "estimated" in meter.describe()


def test_configured_tdp_wins(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "Some Future CPU", busy=0)
    configured = EstimateMeter(
        proc_root=proc, dmi_root=proc / "dmi", cpu_tdp_w=40.0, clock_ticks_per_s=100
    )
    assert configured.cpu_tdp_w == 40.0 and "meters.cpu_tdp_w" in configured.describe()
    set_busy(proc, 400)  # all 4 CPUs busy for one second: the full TDP for 1 s
    assert configured.read()["cpu"].energy_j == pytest.approx(40.0)


def _jiffy_step(proc: Path, busy: int, idle: int) -> None:
    set_busy(proc, busy, idle=1_000_000 + idle)


@pytest.mark.parametrize(
    ("model", "cpuinfo", "dmi", "arch"),
    [
        # The reference VM: a cut model name, Zen 5, hypervisor flag.
        (
            "AMD EPYC",
            "vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t: 2\nflags\t: fpu hypervisor\n",
            None,
            "EPYC 5th Gen",
        ),
        (
            "Intel(R) Xeon(R) Platinum 8259CL",
            "vendor_id\t: GenuineIntel\ncpu family\t: 6\n"
            "model\t: 85\nstepping\t: 7\nflags\t: fpu hypervisor\n",
            None,
            "Cascade Lake",
        ),
        # A known TDP-table part, but DMI says it is a VM: per-vCPU, not the socket TDP.
        ("Intel(R) Xeon(R) Platinum 8480+", "vendor_id\t: GenuineIntel\n", "QEMU", None),
        # Not a VM, not in the TDP table, nothing to tell the architecture by.
        ("Some Future CPU", "", None, None),
    ],
)
def test_per_vcpu_estimate_uses_ccf_coefficients_with_a_bracketing_range(
    tmp_path: Path, model: str, cpuinfo: str, dmi: str | None, arch: str | None
) -> None:
    proc = fake_proc(tmp_path / "proc", model, busy=0, cpuinfo=cpuinfo, mem_kib=8 * 1024 * 1024)
    (tmp_path / "dmi").mkdir()
    if dmi:
        (tmp_path / "dmi" / "sys_vendor").write_text(dmi + "\n")
    meter = EstimateMeter(proc_root=proc, dmi_root=tmp_path / "dmi", clock_ticks_per_s=100)
    rows = {r.architecture: r for r in load_coefficients()}
    if arch is not None:
        lo_min = hi_min = mid_min = rows[arch].min_w
        lo_max = hi_max = mid_max = rows[arch].max_w
        lo_min, lo_max, hi_min, hi_max = lo_min * 0.75, lo_max * 0.75, hi_min * 1.25, hi_max * 1.25
        assert arch in meter.estimate_model
    else:
        mid_min = sum(r.min_w for r in rows.values()) / len(rows)
        mid_max = sum(r.max_w for r in rows.values()) / len(rows)
        lo_min, lo_max = min(r.min_w for r in rows.values()), min(r.max_w for r in rows.values())
        hi_min, hi_max = max(r.min_w for r in rows.values()), max(r.max_w for r in rows.values())
        assert "average" in meter.estimate_model
    assert meter.components == ("cpu", "dram")
    # 4 vCPUs for 10 s: 12 busy CPU-seconds, 28 idle CPU-seconds.
    _jiffy_step(proc, 1200, 2800)
    r = meter.read()
    cpu = r["cpu"]
    assert cpu.energy_j == pytest.approx(mid_min * 28 + mid_max * 12)
    assert cpu.energy_low_j == pytest.approx(lo_min * 28 + lo_max * 12)
    assert cpu.energy_high_j == pytest.approx(hi_min * 28 + hi_max * 12)
    assert cpu.energy_low_j <= cpu.energy_j <= cpu.energy_high_j
    # Average power over the 10 s lies between 4 x min and 4 x max per vCPU.
    assert 4 * mid_min <= cpu.energy_j / 10 <= 4 * mid_max
    assert cpu.energy_j / 10 < 85.0 / 4
    assert r["dram"].energy_j == pytest.approx(8 * MEMORY_W_PER_GB * 10)
    assert "estimated" in meter.describe() and "ccf-vcpu" in meter.describe()


def test_unknown_architecture_averages_all_rows() -> None:
    table = load_coefficients()
    choice = choose_coefficients("Zen 9", table)
    assert choice.central.min_w == pytest.approx(sum(r.min_w for r in table) / len(table))
    assert choice.low.max_w == min(r.max_w for r in table)
    assert "Zen 9 is not in the table" in choice.how


def test_gpu_board_power_counts_only_while_a_window_is_open(tmp_path: Path) -> None:
    clock = VirtualClock(0.0)
    activity = Activity(clock)
    meter = EstimateMeter(proc_root=fake_proc(tmp_path), dmi_root=tmp_path / "dmi",
                          gpu_board_power_w=300.0, activity=activity,
                          clock_ticks_per_s=100)  # fmt: skip
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


def test_sampler_integrates_the_range_of_a_vm_estimate(tmp_path: Path) -> None:
    info = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t: 1\nflags\t: hypervisor\n"
    proc = fake_proc(tmp_path / "proc", "AMD EPYC", cpuinfo=info, mem_kib=4 * 1024 * 1024)
    meter = EstimateMeter(proc_root=proc, dmi_root=tmp_path / "dmi", clock_ticks_per_s=100)
    clock = VirtualClock(0.0)
    sampler = Sampler([meter], clock=clock)
    sampler.sample()
    token = sampler.open_window(clock.t)
    clock.advance(10)
    _jiffy_step(proc, 1000, 3000)  # 10 s: 10 busy, 30 idle CPU-seconds
    sampler.sample()
    w = sampler.measure(token, clock.t)
    row = next(r for r in load_coefficients() if r.architecture == "EPYC 3rd Gen")
    dram_j = 4 * MEMORY_W_PER_GB * 10
    assert w.energy_j == pytest.approx(row.min_w * 30 + row.max_w * 10 + dram_j)
    assert w.energy_low_j == pytest.approx(0.75 * (row.min_w * 30 + row.max_w * 10) + dram_j)
    assert w.energy_high_j == pytest.approx(1.25 * (row.min_w * 30 + row.max_w * 10) + dram_j)
    assert w.estimate_model is not None and "EPYC 3rd Gen" in w.estimate_model
    body = measurement_object(w)
    assert body["energy_range_j"] == [round(w.energy_low_j, 6), round(w.energy_high_j, 6)]
    assert body["estimated"] is True
