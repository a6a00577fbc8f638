"""Several slots through the real app: overlapping streams share the meter fairly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting.ledger.stage import accounting_resource, auth_component, record_component
from bench.batching import union
from config import LedgerSettings, MeterSettings
from meters import meters_component
from meters.base import Meter, Reading
from meters.sharing import OverlapBook
from meters.stage import MeterStage
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.gate import Window
from proxy.observability.semconv import energy_attributes
from tests.support.fake_backend import FakeBackend
from tests.support.figures import record_fake_measurement
from tests.support.ledger import db_rows
from tests.support.meters import SteadyMeter
from tests.support.serving import JoulegateApp, sse_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
CHUNK_DELAY = {"x-fake-chunk-delay-ms": "40"}


class WavyMeter(Meter):
    """A machine counter whose power swings between 60 and 140 W: its total over any
    span is known exactly (:meth:`energy_j`)."""

    name = "wavy"
    estimated = False
    PERIOD_S = 1.3

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    @property
    def components(self) -> tuple[str, ...]:
        return ("machine",)

    def energy_j(self, t: float) -> float:
        """Joules from start-up to monotonic time ``t`` (100 W + 40 W sin)."""
        w = 2 * math.pi / self.PERIOD_S
        x = t - self.t0
        return 100.0 * x + 40.0 / w * (1.0 - math.cos(w * x))

    def read(self) -> dict[str, Reading]:
        return {"machine": Reading(energy_j=self.energy_j(time.monotonic()))}


class Windows(Stage):
    """Keeps every finished exchange (their windows, on the monotonic clock)."""

    name = "windows"

    def __init__(self) -> None:
        self.seen: list[Exchange] = []

    async def on_finished(self, ex: Exchange) -> None:
        self.seen.append(ex)


def keeping(into: list[Stage], component: Component) -> Component:
    """``component``, with the stage it yields kept in ``into`` for the test."""

    @contextlib.asynccontextmanager
    async def make(ctx: AppContext) -> AsyncIterator[Stage | None]:
        async with component(ctx) as stage:
            if stage is not None:
                into.append(stage)
            yield stage

    return make


def _component(stage: Stage) -> Component:
    @contextlib.asynccontextmanager
    async def make(_: AppContext) -> AsyncIterator[Stage]:
        yield stage

    return make


async def _stream(c: httpx.AsyncClient, url: str, delay_s: float, tokens: int) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    r = await c.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": tokens},
                     headers=CHUNK_DELAY)  # fmt: skip
    assert r.status_code == 200
    last = sse_events(r.content)[-2]
    return {"id": r.headers["x-request-id"], **last["energy"]}


async def test_overlapping_streams_share_the_meters_total_by_tokens(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    meter = WavyMeter()
    windows = Windows()
    path = tmp_path / "l.sqlite3"
    components = [
        accounting_resource, auth_component,
        functools.partial(meters_component, meters=[meter]),
        _component(windows),
        record_component,
    ]  # fmt: skip
    async with (
        joulegate_app(
            fake.url, components, max_concurrency=4,
            ledger=LedgerSettings(path=str(path)), meters=MeterSettings(sample_hz=50.0),
        ) as jg,
        httpx.AsyncClient(timeout=30) as c,
    ):  # fmt: skip
        answers = await asyncio.gather(
            *(_stream(c, jg.url, 0.06 * i, n) for i, n in enumerate([6, 10, 14, 18]))
        )
        rows = {r["request_id"]: r for r in db_rows(path)}
    assert len(windows.seen) == 4
    for e in answers:
        assert e["attribution"] == "token_share" and e["exclusive"] is False
        assert e["concurrency_mean"] > 1.0
        assert 0 < e["energy_j"] < e["energy_window_j"]
    # Conservation: the shares, plus the meter's energy while nothing was in flight
    # (unattributed), are the meter's own total from the first admission to the last end.
    spans = [(ex.window.admitted_s or 0.0, ex.window.finished_s or 0.0) for ex in windows.seen]
    busy = union(spans)
    first, last = busy[0][0], busy[-1][1]
    total_j = meter.energy_j(last) - meter.energy_j(first)
    gaps = [(a, b) for (_, a), (b, _) in itertools.pairwise(busy)]
    gaps_j = sum(meter.energy_j(b) - meter.energy_j(a) for a, b in gaps)
    shares_j = sum(e["energy_j"] for e in answers)
    assert shares_j + gaps_j == pytest.approx(total_j, rel=0.01)
    # The ledger holds the same figures as the answers.
    for e in answers:
        row = rows[e["id"]]
        assert row["energy_j"] == pytest.approx(e["energy_j"], abs=1e-6)
        assert row["attribution"] == "token_share"
        assert row["concurrency_mean"] == pytest.approx(e["concurrency_mean"], rel=1e-9)


@pytest.mark.parametrize("slots", [1, 4])
async def test_one_slot_keeps_no_overlap_book_and_notes_no_token_times(
    fake: FakeBackend, joulegate_app: JoulegateApp, slots: int
) -> None:
    stages: list[Stage] = []
    windows = Windows()
    meters = functools.partial(meters_component, meters=[SteadyMeter(50.0, "cpu")])
    components = [keeping(stages, meters), _component(windows)]
    async with (
        joulegate_app(fake.url, components, max_concurrency=slots) as jg,
        httpx.AsyncClient() as c,
    ):
        r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 5})
    (stage,) = stages
    assert isinstance(stage, MeterStage)
    (ex,) = windows.seen
    assert ex.stream_content_chunks == 5
    if slots == 1:
        assert stage.overlaps is None and ex.token_events == []
    else:
        assert isinstance(stage.overlaps, OverlapBook) and len(ex.token_events) == 5
    assert sse_events(r.content)[-2]["energy"]["attribution"] == "exclusive"


async def test_ollama_native_streams_note_a_token_time_a_line_with_several_slots(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    windows = Windows()
    meters = functools.partial(meters_component, meters=[SteadyMeter(50.0, "cpu")])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 4}}  # fmt: skip
    async with (
        joulegate_app(fake.url, [meters, _component(windows)], max_concurrency=2,
                      ollama_native=True) as jg,
        httpx.AsyncClient() as c,
    ):  # fmt: skip
        r = await c.post(jg.url + "/api/chat", json=body)
    assert r.status_code == 200
    (ex,) = windows.seen
    assert len(ex.token_events) == 4


def test_the_span_names_the_share_its_method_and_the_window() -> None:
    ex = Exchange(
        request_id="r1", method="POST", path="/v1/chat/completions", endpoint="chat/completions",
        headers={}, window=Window(arrived_s=0.0, admitted_s=0.5, finished_s=2.5),
        arrived_at=dt.datetime.now(dt.UTC), gated=True,
    )  # fmt: skip
    record_fake_measurement(ex, energy_j=40.0, dynamic_j=None, components_j={"gpu": 40.0})
    assert ex.measurement is not None
    ex.record_measurement(
        ex.measurement, attribution="token_share", concurrency_mean=2.5, share_j=10.0,
        share_dynamic_j=None,
    )  # fmt: skip
    attrs = energy_attributes(ex)
    assert attrs["joulegate.energy.total_j"] == 10.0
    assert attrs["joulegate.energy.gpu_j"] == 10.0
    assert attrs["joulegate.energy.window_j"] == 40.0
    assert attrs["joulegate.energy.attribution"] == "token_share"
    assert attrs["joulegate.energy.concurrency_mean"] == 2.5
