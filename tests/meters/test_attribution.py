"""Per-request energy attribution against a simulated meter with a known power model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.attribution import quantile, simulate
from meters.attribution import EXCLUSIVE, TIME_SHARE, TOKEN_SHARE, Interval, Work, attribute


@pytest.mark.parametrize("slots", [1, 2, 4, 8])
def test_shares_match_the_linear_model(slots: int) -> None:
    r = simulate(slots, duration_s=20.0)
    assert quantile(r.errors, 0.95) <= 0.05
    assert r.conservation <= 0.01
    assert quantile(r.shapley_gap, 0.5) < 0.25  # sanity only: the concave truth differs


def _intervals(energies: list[float], idle_w: float) -> list[Interval]:
    return [Interval(k * 0.1, (k + 1) * 0.1, e, idle_w) for k, e in enumerate(energies)]


spans = st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 1.0), st.booleans())


@settings(max_examples=60, deadline=None)
@given(
    energies=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30),
    idle_w=st.floats(0.0, 500.0),
    reqs=st.lists(spans, min_size=0, max_size=6),
)
def test_conservation_and_non_negative(
    energies: list[float], idle_w: float, reqs: list[tuple[float, float, bool]]
) -> None:
    works = [Work(s, s + d, [(s + d / 2, 3.0)] if tokens else ()) for s, d, tokens in reqs]
    a = attribute(_intervals(energies, idle_w), works)
    got = sum(s.energy_j for s in a.shares) + a.unattributed_j
    assert got == pytest.approx(sum(energies), rel=1e-9, abs=1e-9)
    assert all(s.energy_j >= 0 and s.dynamic_j >= 0 and s.idle_j >= 0 for s in a.shares)


@settings(max_examples=40, deadline=None)
@given(energies=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30))
def test_a_lone_request_over_the_whole_meter_gets_everything(energies: list[float]) -> None:
    end = len(energies) * 0.1
    a = attribute(_intervals(energies, 5.0), [Work(0.0, end, [(end / 2, 1.0)])])
    assert a.shares[0].energy_j == pytest.approx(sum(energies), abs=1e-9)
    assert a.shares[0].method == EXCLUSIVE
    assert a.unattributed_j == pytest.approx(0.0, abs=1e-9)


def test_dynamic_energy_follows_tokens_and_falls_back_to_time() -> None:
    iv = [Interval(0.0, 1.0, 100.0, 20.0)]  # 20 J idle, 80 J dynamic
    busy = Work(0.0, 1.0, [(0.5, 3.0)])
    quiet = Work(0.0, 1.0, [(0.5, 1.0)])
    a = attribute(iv, [busy, quiet])
    assert [s.energy_j for s in a.shares] == pytest.approx([10 + 60, 10 + 20])
    assert [s.method for s in a.shares] == [TOKEN_SHARE, TOKEN_SHARE]
    assert a.shares[0].concurrency_mean == pytest.approx(2.0)
    b = attribute(iv, [busy, Work(0.0, 1.0)])
    assert [s.energy_j for s in b.shares] == pytest.approx([50.0, 50.0])
    assert b.shares[1].method == TIME_SHARE


def test_energy_with_nothing_in_flight_is_unattributed() -> None:
    a = attribute(_intervals([10.0, 10.0], 0.0), [Work(0.0, 0.1, [(0.05, 1.0)])])
    assert a.shares[0].energy_j == pytest.approx(10.0)
    assert a.unattributed_j == pytest.approx(10.0)
