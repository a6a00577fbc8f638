"""The one renderer: the ``energy`` object and the headers show the same figures."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from proxy.exchange import Exchange
from proxy.gate import Window
from proxy.render import energy_object, figure_headers
from tests.figures import record_fake_measurement

joules = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
maybe_joules = st.none() | joules


def _exchange() -> Exchange:
    return Exchange(
        request_id="r1", method="POST", path="/v1/chat/completions", endpoint="chat/completions",
        headers={}, window=Window(arrived_s=0.0, admitted_s=0.5, finished_s=2.5),
        arrived_at=dt.datetime.now(dt.UTC), gated=True,
    )  # fmt: skip


@given(
    energy_j=maybe_joules,
    gpu_j=maybe_joules,
    forecast_j=maybe_joules,
    co2e_g=st.none() | st.floats(min_value=0.0, max_value=1e3, allow_nan=False),
)
def test_body_and_headers_agree_on_every_figure(
    energy_j: float | None, gpu_j: float | None, forecast_j: float | None, co2e_g: float | None
) -> None:
    ex = _exchange()
    ex.forecast_made, ex.forecast_energy_j = True, forecast_j
    record_fake_measurement(ex, energy_j=energy_j, dynamic_j=None, components_j={"gpu": gpu_j})
    ex.carbon_source, ex.carbon_intensity_g_per_kwh, ex.co2e_g = "static", 400.0, co2e_g
    body, headers = energy_object(ex), figure_headers(ex)

    def agree(header: str, value: float | None, digits: int = 3) -> None:
        if value is None:
            assert header not in headers
        else:
            assert abs(float(headers[header]) - value) <= 0.5 * 10**-digits + abs(value) * 1e-6

    agree("x-energy-j", body["energy_j"])
    agree("x-energy-gpu-j", body["components"]["gpu"]["energy_j"])
    agree("x-energy-forecast-j", body["forecast_energy_j"])
    agree("x-co2e-g", body["co2e_g"], digits=9)
    assert headers["x-energy-meter"] == body["meter"]
    assert headers["x-thermal-wait-ms"] == f"{body['thermal_wait_ms']:.1f}"
    assert ("co2e_reason" in body) is (energy_j is None)


def test_a_stage_that_did_not_run_leaves_its_figures_out() -> None:
    ex = _exchange()
    body, headers = energy_object(ex), figure_headers(ex)
    assert set(body) == {"queue_ms", "thermal_wait_ms", "duration_ms"}
    assert set(headers) == {"x-thermal-wait-ms"}
    assert body["duration_ms"] == 2000.0
