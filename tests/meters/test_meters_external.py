"""Whole-machine meters: a fake Prometheus endpoint, ipmitool and smart plugs."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from config.errors import MeterError, MeterUnavailable
from meters.ipmi import IpmiMeter, parse_power_w
from meters.plug import ShellyMeter, TasmotaMeter
from meters.prometheus import PrometheusMeter
from tests.support.meters import runner_returning

EXPOSITION = """# HELP scaph_host_power_microwatts Host power
# TYPE scaph_host_power_microwatts gauge
scaph_host_power_microwatts 182500000
# TYPE pdu_energy_joules counter
pdu_energy_joules_total{{outlet="1",rack="a"}} {a}
pdu_energy_joules_total{{outlet="2",rack="a"}} {b}
pdu_energy_joules_total{{outlet="1",rack="b"}} 999999
"""


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


class Exporter:
    """A fake /metrics endpoint whose PDU counters the test moves."""

    def __init__(self) -> None:
        self.a, self.b = 1000.0, 500.0
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        text = EXPOSITION.format(a=self.a, b=self.b)
        return httpx.Response(self.status, text=text)


def test_prometheus_gauge_in_microwatts() -> None:
    meter = PrometheusMeter("http://exporter/metrics", "scaph_host_power_microwatts",
                            client=client_for(Exporter()))  # fmt: skip
    assert meter.read()["machine"].power_w == pytest.approx(182.5)
    assert meter.remote and meter.components == ("machine",)


def test_prometheus_counter_with_labels_sums_matches_and_bridges_a_reset() -> None:
    exporter = Exporter()
    meter = PrometheusMeter("http://exporter/metrics", "pdu_energy_joules",
                            labels=["rack=a"], unit="J", client=client_for(exporter))  # fmt: skip
    start = meter.read()["machine"].energy_j
    exporter.a += 30.0
    exporter.b += 12.5
    assert meter.read()["machine"].energy_j == pytest.approx(start + 42.5)  # type: ignore[operator]
    exporter.a, exporter.b = 4.0, 1.0  # the exporter restarted: counters from zero
    assert meter.read()["machine"].energy_j == pytest.approx(start + 42.5 + 5.0)  # type: ignore[operator]


def test_prometheus_missing_metric_or_endpoint_is_unavailable_then_an_error() -> None:
    with pytest.raises(MeterUnavailable, match="no sample of nope"):
        PrometheusMeter("http://exporter/metrics", "nope", client=client_for(Exporter()))
    exporter = Exporter()
    meter = PrometheusMeter("http://exporter/metrics", "scaph_host_power_microwatts",
                            client=client_for(exporter))  # fmt: skip
    exporter.status = 503
    with pytest.raises(MeterError, match="answered 503"):
        meter.read()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(MeterUnavailable, match="ConnectError") as info:
        PrometheusMeter("http://exporter/metrics", "x", client=client_for(refuse))
    assert isinstance(info.value.__cause__, MeterError)


IPMI_OUTPUT = """
    Instantaneous power reading:                   412 Watts
    Minimum during sampling period:                 90 Watts
    Maximum during sampling period:                498 Watts
    Average power reading over sample period:      377 Watts
    IPMI timestamp:                           Thu Jan  1 00:00:00 2026
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated
"""


def test_ipmi_reads_the_instantaneous_power() -> None:
    runner = runner_returning(IPMI_OUTPUT)
    meter = IpmiMeter(runner)
    assert meter.read()["machine"].power_w == 412.0
    assert runner.calls[-1] == ["ipmitool", "dcmi", "power", "reading"]  # type: ignore[attr-defined]


def test_ipmi_failures() -> None:
    with pytest.raises(MeterError, match="deactivated"):
        parse_power_w(IPMI_OUTPUT.replace("activated", "deactivated"))
    with pytest.raises(MeterUnavailable, match="no 'Instantaneous"):
        IpmiMeter(runner_returning("Could not open device\n"))
    with pytest.raises(MeterUnavailable, match="timed out"):
        IpmiMeter(runner_returning(MeterError("ipmitool: timed out")))


def plug(routes: dict[str, object]) -> tuple[httpx.Client, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        seen.append(target)
        if target not in routes:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, text=json.dumps(routes[target]))

    return client_for(handler), seen


def test_shelly_gen2_apower() -> None:
    client, _ = plug({"/rpc/Switch.GetStatus?id=0": {"id": 0, "output": True, "apower": 96.4}})
    meter = ShellyMeter("http://plug.local/", client=client)
    assert meter.read()["machine"].power_w == pytest.approx(96.4)
    assert meter.generation == 2 and "Gen2" in meter.describe()


def test_shelly_gen1_meters_power() -> None:
    client, seen = plug({"/status": {"meters": [{"power": 51.2, "is_valid": True}]}})
    meter = ShellyMeter("http://plug.local", client=client)
    assert meter.read()["machine"].power_w == pytest.approx(51.2)
    assert meter.generation == 1
    assert seen[-1] == "/status"  # Gen1 remembered: no more Gen2 probes
    assert seen.count("/rpc/Switch.GetStatus?id=0") == 1


def test_tasmota_status_8_power_single_and_multi_channel() -> None:
    client, _ = plug({"/cm?cmnd=Status%208": {"StatusSNS": {"ENERGY": {"Power": 230}}}})
    assert TasmotaMeter("http://t", client=client).read()["machine"].power_w == 230.0
    client, _ = plug({"/cm?cmnd=Status%208": {"StatusSNS": {"ENERGY": {"Power": [10, 15]}}}})
    assert TasmotaMeter("http://t", client=client).read()["machine"].power_w == 25.0
    client, _ = plug({"/cm?cmnd=Status%208": {"StatusSNS": {"Time": "x"}}})
    with pytest.raises(MeterUnavailable, match=r"ENERGY\.Power"):
        TasmotaMeter("http://t", client=client)
