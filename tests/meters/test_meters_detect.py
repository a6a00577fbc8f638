"""Auto-detection order and its one log line per meter."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from config import MeterSettings
from config.errors import ConfigError
from meters.detect import Hardware, detect_meters
from tests.support.meters import FakeNvml, fake_proc, rapl_tree, runner_returning


def settings(tmp_path: Path, **kw: object) -> MeterSettings:
    base: dict[str, object] = {
        "rapl_root": str(tmp_path / "powercap"),
        "proc_root": str(fake_proc(tmp_path / "proc")),
        "dmi_root": str(tmp_path / "dmi"),
    }
    return MeterSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_gpu_and_cpu_counters_found_in_order_and_no_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "joulegate.meters")
    rapl_tree(tmp_path / "powercap")
    found = detect_meters(settings(tmp_path), hardware=Hardware(nvml=FakeNvml()))
    assert [m.name for m in found.meters] == ["nvml", "rapl"]
    assert found.lines[0].startswith("nvml: 1 GPU") and found.lines[1].startswith("rapl: cpu")
    assert [r.getMessage() for r in caplog.records] == [f"meter {line}" for line in found.lines]


def test_nothing_found_falls_back_to_the_estimate_with_reasons(tmp_path: Path) -> None:
    found = detect_meters(settings(tmp_path), hardware=Hardware(nvml=FakeNvml(init_error=12)))
    assert [m.name for m in found.meters] == ["estimate"]
    assert found.lines[0] == "nvml: not used (NVML open: NVML Shared Library Not Found)"
    assert found.lines[1].startswith("rapl: not used (no RAPL zones under")
    assert found.lines[2].startswith("estimate: cpu 12.5 W TDP")


def test_configured_whole_machine_meter_is_used_after_local_ones(tmp_path: Path) -> None:
    def exporter(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="scaph_host_power_microwatts 90000000\n")

    def client() -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(exporter))

    rapl_tree(tmp_path / "powercap")
    hw = Hardware(
        nvml=FakeNvml(),
        http_client=client,
        ipmi_runner=runner_returning("Instantaneous power reading: 300 Watts\n"),
    )
    cfg = settings(tmp_path, prometheus_url="http://e/metrics", ipmi=True)
    found = detect_meters(cfg, hardware=hw)
    assert [m.name for m in found.meters] == ["nvml", "rapl", "prometheus", "ipmi"]
    assert [line.split(":")[0] for line in found.lines] == [m.name for m in found.meters]


def test_unreadable_rapl_is_a_warning_but_absent_hardware_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "joulegate.meters")
    root = rapl_tree(tmp_path / "powercap")
    for f in root.rglob("energy_uj"):
        f.unlink()
        f.mkdir()  # reading it fails even as root (IsADirectoryError, an OSError)
    detect_meters(settings(tmp_path), hardware=Hardware(nvml=FakeNvml(init_error=12)))
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"meter nvml": "INFO", "meter rapl": "WARNING", "meter estimate": "INFO"}


def test_explicit_kinds_that_fail_still_leave_an_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hw = Hardware(ipmi_runner=runner_returning("garbage"))
    found = detect_meters(settings(tmp_path, kinds=("ipmi",)), hardware=hw)
    assert [m.name for m in found.meters] == ["estimate"]
    assert "ipmi: not used" in caplog.text and "estimating instead" in caplog.text


def test_explicit_list_is_used_as_given(tmp_path: Path) -> None:
    hw = Hardware(ipmi_runner=runner_returning("Instantaneous power reading: 300 Watts\n"))
    found = detect_meters(settings(tmp_path, kinds=("ipmi", "estimate")), hardware=hw)
    assert [m.name for m in found.meters] == ["ipmi", "estimate"]


def test_bad_meter_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"meters\.kinds"):
        MeterSettings(kinds=("auto", "nvml"))
    with pytest.raises(ConfigError, match=r"meters\.kinds"):
        MeterSettings(kinds=("geiger",))
    with pytest.raises(ConfigError, match=r"meters\.external_hz"):
        MeterSettings(external_hz=0.0)
    with pytest.raises(ConfigError, match=r"meters\.prometheus_labels"):
        MeterSettings(prometheus_labels=("nolabel",))
