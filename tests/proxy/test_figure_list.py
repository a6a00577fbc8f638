"""The one declared field list: every view's name for a figure exists in that view,
and a figure has one writer (its record)."""

from __future__ import annotations

import datetime as dt

import pytest

from accounting.ledger.rows import LedgerRow
from accounting.study.dataset import StudyRow
from proxy.exchange import Exchange
from proxy.figures import FIGURES, CarbonFigures
from proxy.gate import Window
from proxy.observability.accesslog import access_fields
from proxy.observability.semconv import ENERGY_ATTRIBUTES


def test_every_declared_column_span_and_study_field_exists_in_its_view() -> None:
    ex = Exchange("r", "POST", "/v1/chat/completions", "chat/completions", {},
                  Window(arrived_s=0.0), dt.datetime.now(dt.UTC), gated=True)  # fmt: skip
    for f in FIGURES:
        assert f.column is None or f.column in LedgerRow.__struct_fields__, f
        assert f.study is None or f.study in StudyRow.__struct_fields__, f
        assert f.span is None or f.span.replace("{}", "<component>") in ENERGY_ATTRIBUTES, f
        assert f.access is None or f.access in access_fields(ex), f


def test_a_figure_is_written_only_on_its_record() -> None:
    ex = Exchange("r", "POST", "/v1/chat/completions", "chat/completions", {},
                  Window(arrived_s=0.0), dt.datetime.now(dt.UTC), gated=True)  # fmt: skip
    with pytest.raises(AttributeError):
        ex.co2e_g = 1.0  # type: ignore[misc]
    ex.carbon = CarbonFigures(source="static", co2e_g=1.0)
    assert ex.co2e_g == 1.0 and ex.carbon_source == "static"
