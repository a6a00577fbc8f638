"""Embodied emissions that fit the machine (issue 30): GPUs at their figure plus their
share of a server base, a VM at its vCPUs' share of a host, bare metal at a generic
server; ``carbon.embodied_g`` overrides; every answer and ledger row names the choice."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting import SqliteLedger
from accounting.carbon import sci
from accounting.carbon.embodied import Figures, embodied_for
from accounting.carbon.stage import carbon
from accounting.ledger.rows import LedgerRow, iso
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import CarbonSettings, LedgerSettings, MeterSettings
from meters import meters_component
from meters.estimate import EstimateMeter
from meters.host import detect_host
from meters.vcpu import choose_coefficients
from proxy.cli import main
from proxy.host import Host
from tests.support.ledger import db_rows
from tests.support.meters import FakeGpu, FakeNvml, SteadyMeter, fake_proc

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
FOUR_YEARS_S = 4 * 365.25 * 86400
VM = "hypervisor flag"


def machine(*, gpus: tuple[str, ...] = (), virtual: str | None = None, cpus: int = 2) -> Host:
    return Host("AMD EPYC", cpus, 23.5, virtual, gpus)


def test_the_bundled_figures_are_the_cited_ones() -> None:
    f = Figures.bundled()
    assert (f.gpu_kg, f.gpu_server_base_kg, f.gpu_server_slots) == (164.0, 5700.0, 8)
    assert (f.server_kg, f.host_vcpus) == (1000.0, 96)


def test_a_two_vcpu_vm_is_charged_its_share_of_a_host_not_an_h100_server() -> None:
    e = embodied_for(machine(virtual=VM, cpus=2), None)
    assert e.total_g == pytest.approx(1_000_000 * 2 / 96)  # 20.8 kg, not 5,864 kg
    assert e.model == "vm-share: 2 of 96 host vCPUs x generic server 1,000 kg = 20.8 kg"


def test_gpus_are_charged_per_gpu_plus_their_share_of_the_server_base() -> None:
    one = embodied_for(machine(gpus=("NVIDIA H100 80GB HBM3",), virtual=VM), None)
    assert one.total_g == pytest.approx((164 + 5700 / 8) * 1000)
    assert one.model.startswith("gpu-server: 1 GPU (NVIDIA H100 80GB HBM3) x 164 kg + 1/8 of")
    eight = embodied_for(machine(gpus=("NVIDIA H100 80GB HBM3",) * 8), None)
    assert eight.total_g == pytest.approx((8 * 164 + 5700) * 1000)


def test_a_gpu_without_its_own_figure_is_charged_the_h100s_and_the_model_says_so() -> None:
    mixed = embodied_for(machine(gpus=("NVIDIA L4", "NVIDIA H100 80GB HBM3")), None)
    assert mixed.total_g == pytest.approx((2 * 164 + 5700 * 2 / 8) * 1000)
    assert "x 164 kg (the H100's figure, applied to NVIDIA L4) + 2/8 of" in mixed.model
    h100 = embodied_for(machine(gpus=("NVIDIA H100 80GB HBM3",)), None)
    assert "the H100's figure" not in h100.model


def test_bare_metal_without_gpus_is_a_generic_server_and_the_setting_overrides() -> None:
    assert embodied_for(machine(), None).total_g == 1_000_000
    fixed = embodied_for(machine(gpus=("NVIDIA H100 80GB HBM3",)), 0.0)
    assert (fixed.total_g, fixed.model) == (0.0, "fixed: carbon.embodied_g 0 kg")


def test_sci_of_a_two_vcpu_vm_is_mostly_operational() -> None:
    # The machine the issue was filed from: a 2-vCPU VM of unknown EPYC generation,
    # at the world-average grid. Even with one vCPU busy and no DRAM line at all,
    # operational emissions outweigh the embodied share; with the DRAM line, by far.
    vm = embodied_for(machine(virtual=VM, cpus=2), None)
    c = choose_coefficients(None).central
    power_w = c.min_w + c.max_w  # one vCPU idle, one busy
    operational_g = sci.operational_g(sci.kwh_from_j(power_w * 1.0), 475.0)
    embodied_g = sci.embodied_g(vm.total_g, 1.0, FOUR_YEARS_S)
    assert operational_g > 2 * embodied_g
    with_dram = sci.operational_g(sci.kwh_from_j((power_w + 23.5 * 0.392) * 1.0), 475.0)
    assert with_dram / (with_dram + embodied_g) > 0.9


def test_detection_reads_proc_dmi_and_nvml(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", "AMD EPYC", cpuinfo="flags\t\t: fpu hypervisor\n",
                     mem_kib=24_641_536)  # fmt: skip
    settings = MeterSettings(proc_root=str(proc), dmi_root=str(tmp_path / "dmi"))
    found = detect_host(settings, nvml=FakeNvml([FakeGpu(), FakeGpu()]))
    assert (found.cpu_model, found.logical_cpus, found.virtual) == ("AMD EPYC", 4, VM)
    assert found.memory_gib == pytest.approx(23.5)
    assert found.gpus == ("NVIDIA H100 80GB HBM3",) * 2
    no_gpu = detect_host(settings, nvml=FakeNvml(init_error=12))
    assert no_gpu.gpus == ()


def test_the_estimate_meter_says_its_floor_and_full_load(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", "AMD EPYC", cpuinfo="flags\t\t: hypervisor\n",
                     mem_kib=1024 * 1024)  # fmt: skip
    meter = EstimateMeter(proc_root=proc, dmi_root=tmp_path / "dmi")
    c = choose_coefficients(None).central
    floor_w, full_w = meter.power_range_w()
    assert floor_w == pytest.approx(4 * c.min_w + 0.392)
    assert full_w == pytest.approx(4 * c.max_w + 0.392)
    meter.close()


async def test_every_answer_and_ledger_row_names_the_embodied_model(
    fake: Any, joulegate_app: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "l.sqlite3"
    vm = machine(virtual=VM, cpus=2)
    comps = [
        accounting_resource, auth_component,
        functools.partial(meters_component, meters=[SteadyMeter(10.0, "cpu")], machine=vm),
        carbon(), record_component,
    ]  # fmt: skip
    settings = {"ledger": LedgerSettings(path=str(ledger)), "carbon": CarbonSettings(country="FR")}
    async with joulegate_app(fake.url, comps, **settings) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        ready = (await c.get(jg.url + "/readyz")).json()
    energy = r.json()["energy"]
    expected = "vm-share: 2 of 96 host vCPUs x generic server 1,000 kg = 20.8 kg"
    assert energy["embodied_model"] == expected
    assert "estimate_model" in energy
    assert energy["sci_g"] == pytest.approx(
        energy["sci_operational_g"] + energy["sci_embodied_g"], rel=1e-4
    )
    assert float(r.headers["x-sci-embodied-g"]) == pytest.approx(energy["sci_embodied_g"])
    assert float(r.headers["x-sci-operational-g"]) == pytest.approx(energy["sci_operational_g"])
    (row,) = db_rows(ledger)
    assert row["embodied_model"] == expected
    checks = {c["name"]: c for c in ready["checks"]}
    assert checks["carbon"]["embodied_model"] == expected
    assert checks["meters"]["host"]["logical_cpus"] == 2


def test_the_cli_forecast_charges_this_machines_hardware_like_the_carbon_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI forecast charged a generic 1,000 kg server to a 2-vCPU VM (SCI's embodied
    # part 48x too large) while the proxy charged the VM's share of its host.
    proc = fake_proc(tmp_path / "proc", "AMD EPYC", cpuinfo="flags\t\t: hypervisor\n",
                     mem_kib=1024 * 1024)  # fmt: skip
    config = tmp_path / "joulegate.toml"
    config.write_text(f'[meters]\nproc_root = "{proc}"\ndmi_root = "{tmp_path / "dmi"}"\n')
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        LedgerRow(request_id=f"r{i}", ts=iso(start + dt.timedelta(seconds=i)),
                  model_served="m", status=200, prompt_tokens=10 + i, completion_tokens=20 + i,
                  energy_j=10.0 + i, duration_s=1.0 + 0.1 * i)
        for i in range(12)
    ]  # fmt: skip
    ledger = tmp_path / "l.sqlite3"

    async def write() -> None:
        async with SqliteLedger(ledger) as db:
            await db.append_many(rows)

    asyncio.run(write())
    argv = ["forecast", "--config", str(config), "--ledger", str(ledger), "--model", "m",
            "--prompt", "hello", "--max-tokens", "30", "--format", "json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = embodied_for(machine(virtual=VM, cpus=4), None)
    assert out["embodied_model"] == expected.model
    assert expected.model.startswith("vm-share: 4 of 96 host vCPUs")
    embodied = out["sci_g"]["p50"] - out["co2e_g"]["p50"]
    assert embodied == pytest.approx(
        sci.embodied_g(expected.total_g, out["duration_s"]["p50"], FOUR_YEARS_S), rel=1e-3
    )
