"""SCI arithmetic: the specification's worked example and E * I."""

from __future__ import annotations

import pytest

from accounting.carbon import sci
from config import CarbonSettings

HOUR_S = 3600.0
FOUR_YEARS_S = 4 * 365 * 24 * HOUR_S


def test_worked_example_of_the_specification() -> None:
    # 1,000 kgCO2e of hardware over a 4-year life, reserved whole for one hour.
    m = sci.embodied_g(1_000_000.0, reserved_s=HOUR_S, lifetime_s=FOUR_YEARS_S, resource_share=1)
    assert m == pytest.approx(28.54, abs=0.01)
    assert round(m, 1) == 28.5


def test_default_lifetime_of_four_years_gives_the_same_example() -> None:
    # The default counts leap days (365.25 d/y): still ≈ 28.5 g.
    m = sci.embodied_g(1_000_000.0, HOUR_S, CarbonSettings().lifetime_s)
    assert round(m, 1) == 28.5


def test_resource_share_scales_the_embodied_part() -> None:
    whole = sci.embodied_g(1_000_000.0, HOUR_S, FOUR_YEARS_S, 1.0)
    assert sci.embodied_g(1_000_000.0, HOUR_S, FOUR_YEARS_S, 0.25) == pytest.approx(whole / 4)


def test_operational_part_is_energy_times_intensity() -> None:
    # 7.2 MJ = 2 kWh at 400 g/kWh.
    assert sci.kwh_from_j(7_200_000.0) == 2.0
    assert sci.operational_g(2.0, 400.0) == 800.0
    assert sci.operational_g(sci.kwh_from_j(36.0), 56.0) == pytest.approx(0.00056)


def test_sci_adds_both_parts_and_divides_per_unit() -> None:
    score = sci.sci(
        energy_kwh=0.001,
        intensity_g_per_kwh=500.0,
        total_embodied_g=1_000_000.0,
        reserved_s=HOUR_S,
        lifetime_s=FOUR_YEARS_S,
    )
    assert score.operational_g == pytest.approx(0.5)
    assert score.embodied_g == pytest.approx(28.539, abs=1e-3)
    assert score.total_g == pytest.approx(29.039, abs=1e-3)
    assert score.per(100) == pytest.approx(0.29039, abs=1e-5)
    assert score.per(0) is None
    assert score.per(None) is None


def test_default_embodied_is_an_h100_plus_an_eight_gpu_server() -> None:
    cfg = CarbonSettings()
    assert cfg.embodied_g == 164_000.0 + 5_700_000.0
    # One second of a dedicated server: 5,864 kg over 4 years ≈ 0.046 g.
    assert sci.embodied_g(cfg.embodied_g, 1.0, cfg.lifetime_s) == pytest.approx(0.04646, rel=1e-3)


def test_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lifetime_s"):
        sci.embodied_g(1.0, 1.0, 0.0)
