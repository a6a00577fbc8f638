"""The one renderer: the ``energy`` object and the headers show the same figures."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from proxy.exchange import Exchange
from proxy.figures import CarbonFigures, ComponentEnergy, ForecastFigure, WindowEnergy
from proxy.gate import Window
from proxy.render import energy_object, figure_headers
from tests.support.figures import record_fake_measurement

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
    ex.forecast = ForecastFigure(forecast_j)
    record_fake_measurement(ex, energy_j=energy_j, dynamic_j=None, components_j={"gpu": gpu_j})
    ex.carbon = CarbonFigures(source="static", intensity_g_per_kwh=400.0, co2e_g=co2e_g)
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


@given(window_j=joules, share=st.floats(min_value=0.0, max_value=1.0))
def test_a_shared_window_shows_the_share_everywhere_and_the_total_apart(
    window_j: float, share: float
) -> None:
    ex = _exchange()
    record_fake_measurement(ex, energy_j=window_j, dynamic_j=None, components_j={"gpu": window_j})
    assert ex.measurement is not None
    ex.record_measurement(
        ex.measurement, attribution="token_share", concurrency_mean=2.0,
        share_j=window_j * share, share_dynamic_j=None,
    )  # fmt: skip
    body, headers = energy_object(ex), figure_headers(ex)
    assert ex.energy_j == window_j * share and ex.energy_window_j == window_j
    assert body["energy_j"] == round(window_j * share, 6)
    assert body["energy_window_j"] == round(window_j, 6)
    assert abs(float(headers["x-energy-j"]) - window_j * share) <= 0.0005 + window_j * 1e-9
    assert (body["attribution"], body["concurrency_mean"]) == ("token_share", 2.0)


def test_a_shared_windows_components_power_and_range_are_scaled_to_the_share() -> None:
    ex = _exchange()
    window = WindowEnergy(
        start_s=0.5, end_s=2.5,
        components={
            "gpu": ComponentEnergy("gpu", "nvml", 300.0, 200.0, 50.0, False, False),
            "cpu": ComponentEnergy("cpu", "estimate", 100.0, 40.0, 30.0, True, False,
                                   energy_low_j=80.0, energy_high_j=120.0),
        },
        energy_j=400.0, dynamic_j=240.0, idle_power_w=80.0, meter="nvml+estimate",
        estimated=True, low_resolution=False, exclusive=False,
        energy_low_j=380.0, energy_high_j=420.0,
    )  # fmt: skip
    ex.record_measurement(
        window, attribution="token_share", concurrency_mean=3.0, share_j=100.0, share_dynamic_j=60.0
    )
    body, headers = energy_object(ex), figure_headers(ex)
    gpu, cpu = body["components"]["gpu"], body["components"]["cpu"]
    assert (body["energy_j"], body["energy_dynamic_j"]) == (100.0, 60.0)
    assert body["energy_window_j"] == 400.0
    assert (gpu["energy_j"], cpu["energy_j"]) == (75.0, 25.0)  # a quarter each, adding up
    assert (gpu["energy_dynamic_j"], cpu["energy_dynamic_j"]) == (50.0, 10.0)
    assert (gpu["power_w"], cpu["power_w"], body["power_w"]) == (37.5, 12.5, 50.0)
    assert cpu["energy_range_j"] == [20.0, 30.0] and body["energy_range_j"] == [95.0, 105.0]
    assert (gpu["idle_power_w"], body["idle_power_w"]) == (50.0, 80.0)  # the machine's rates
    assert (headers["x-energy-gpu-j"], headers["x-energy-cpu-j"]) == ("75.000", "25.000")
    assert ex.energy_by_component_j == {"gpu": 75.0, "cpu": 25.0}  # what the ledger stores
    assert (ex.energy_low_j, ex.energy_high_j) == (95.0, 105.0)


@given(
    energy_j=st.floats(min_value=0.0, max_value=1e12, allow_nan=False),
    forecast_j=st.floats(min_value=0.0, max_value=1e12, allow_nan=False),
)
def test_body_figures_are_the_exchanges_to_six_decimals(energy_j: float, forecast_j: float) -> None:
    """Whatever the magnitude: within half a unit of the sixth decimal of the exchange's
    figure, and with no more decimals than that (no float noise in the JSON)."""
    ex = _exchange()
    ex.forecast = ForecastFigure(forecast_j)
    record_fake_measurement(ex, energy_j=energy_j, dynamic_j=None, components_j={"gpu": energy_j})
    body = energy_object(ex)
    for shown, exact in (
        (body["energy_j"], energy_j),
        (body["components"]["gpu"]["energy_j"], energy_j),
        (body["forecast_energy_j"], forecast_j),
    ):
        assert abs(shown - exact) <= 0.5e-6 + abs(exact) * 1e-15
        assert shown == round(shown, 6)
    assert body["duration_ms"] == 2000.0 and body["queue_ms"] == 500.0
