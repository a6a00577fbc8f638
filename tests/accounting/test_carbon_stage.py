"""The carbon stage: CO2eq and SCI on the exchange, in the body and in the headers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from accounting.carbon.intensity import FixedIntensity, Intensity
from accounting.carbon.stage import CarbonStage, carbon
from config import CarbonSettings, ConfigError, Settings
from proxy.backends import BackendRouter
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.gate import Gate, Window
from proxy.render import carbon_object, figure_headers
from tests.support.fake_carbon import FakeCarbonApi
from tests.support.figures import record_fake_measurement
from tests.support.serving import sse_events

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
FOUR_YEARS_S = 4 * 365.25 * 86400


class FakeMeter(Stage):
    """Stands in for the meters stage: every request used ``energy_j``."""

    name = "meters"

    def __init__(self, energy_j: float | None) -> None:
        self.energy_j = energy_j

    async def on_finished(self, ex: Exchange) -> None:
        record_fake_measurement(ex, energy_j=self.energy_j, dynamic_j=None, components_j={})


def fake_meter(energy_j: float | None) -> Component:
    @contextlib.asynccontextmanager
    async def component(ctx: AppContext) -> AsyncIterator[Stage]:
        yield FakeMeter(energy_j)

    return component


def exchange(
    energy_j: float | None, tokens: int | None, duration_s: float = 2.0, gated: bool = True
) -> Exchange:
    ex = Exchange(
        request_id="r1", method="POST", path="/v1/chat/completions", endpoint="chat/completions",
        headers={}, window=Window(arrived_s=0.0, admitted_s=1.0, finished_s=1.0 + duration_s),
        arrived_at=dt.datetime.now(dt.UTC), gated=gated, completion_tokens=tokens,
    )  # fmt: skip
    if energy_j is not None:
        record_fake_measurement(ex, energy_j=energy_j, dynamic_j=None, components_j={})
    return ex


def _carbon_headers(ex: Exchange) -> dict[str, str]:
    """The carbon headers the renderer sends for ``ex``."""
    carbon = ("x-co2e-g", "x-carbon-", "x-sci-")
    return {k: v for k, v in figure_headers(ex).items() if k.startswith(carbon)}


# --- the stage on one exchange -----------------------------------------------------------


async def test_stage_turns_energy_into_co2e_and_sci() -> None:
    cfg = CarbonSettings(pue=1.5, embodied_g=1_000_000.0, lifetime_s=FOUR_YEARS_S)
    stage = CarbonStage(FixedIntensity(Intensity(400.0, "table:XYZ")), cfg)
    ex = exchange(energy_j=3600.0, tokens=10, duration_s=3600.0)  # 1 Wh over one hour
    await stage.on_finished(ex)

    # E = 1 Wh * PUE 1.5 = 0.0015 kWh; E * I = 0.6 g; M = 1,000 kg * 1 h / 4 y ≈ 28.5 g.
    assert ex.co2e_g == pytest.approx(0.6)
    assert ex.sci_operational_g == ex.co2e_g
    assert ex.sci_embodied_g == pytest.approx(28.5193, abs=1e-4)
    assert ex.sci_g == pytest.approx(29.1193, abs=1e-4)
    assert ex.sci_g_per_token == pytest.approx(2.91193, abs=1e-5)
    assert (ex.carbon_intensity_g_per_kwh, ex.carbon_source) == (400.0, "table:XYZ")
    assert carbon_object(ex) == {
        "co2e_g": 0.6, "carbon_intensity_g_per_kwh": 400.0, "carbon_source": "table:XYZ",
        "pue": 1.5, "sci_g": 29.1193, "sci_g_per_token": 2.91193, "sci_operational_g": 0.6,
        "sci_embodied_g": 28.5193, "embodied_model": "fixed: carbon.embodied_g 1,000 kg",
    }  # fmt: skip
    assert _carbon_headers(ex) == {
        "x-co2e-g": "0.6", "x-carbon-intensity-g-per-kwh": "400", "x-carbon-source": "table:XYZ",
        "x-sci-g": "29.1193", "x-sci-operational-g": "0.6", "x-sci-embodied-g": "28.5193",
        "x-sci-g-per-token": "2.91193",
    }  # fmt: skip


async def test_unmeasured_energy_gives_no_co2e_but_says_why() -> None:
    stage = CarbonStage(FixedIntensity(Intensity(56.0, "table:FRA")), CarbonSettings())
    ex = exchange(energy_j=None, tokens=4)
    await stage.on_finished(ex)
    assert ex.co2e_g is None and ex.sci_g is None and ex.sci_g_per_token is None
    body = carbon_object(ex)
    assert body["co2e_g"] is None and body["sci_g"] is None
    assert body["co2e_reason"] == "no energy measurement for this request"
    # No machine given: a generic server, 2 s of 1,000 kg over 4 years.
    assert body["sci_embodied_g"] == pytest.approx(0.0158440, rel=1e-5)
    assert body["embodied_model"].startswith("cpu-server: generic server 1,000 kg")
    assert _carbon_headers(ex) == {
        "x-carbon-intensity-g-per-kwh": "56",
        "x-carbon-source": "table:FRA",
        "x-sci-embodied-g": "0.015844",
    }


async def test_no_output_tokens_means_no_per_token_score() -> None:
    stage = CarbonStage(FixedIntensity(Intensity(56.0, "table:FRA")), CarbonSettings())
    for tokens in (None, 0):
        ex = exchange(energy_j=10.0, tokens=tokens)
        await stage.on_finished(ex)
        assert ex.sci_g is not None and ex.sci_g_per_token is None
        assert carbon_object(ex)["sci_g_per_token"] is None
        assert "x-sci-g-per-token" not in figure_headers(ex)


async def test_ungated_requests_are_left_alone() -> None:
    stage = CarbonStage(FixedIntensity(Intensity(56.0, "table:FRA")), CarbonSettings())
    ex = exchange(energy_j=10.0, tokens=4, gated=False)
    await stage.on_finished(ex)
    assert ex.co2e_g is None and carbon_object(ex) == {} and _carbon_headers(ex) == {}


async def test_unknown_country_stops_the_component_at_start_up() -> None:
    settings = Settings(carbon=CarbonSettings(country="QQ"))
    async with httpx.AsyncClient() as client:
        router = BackendRouter(settings.backend_list, client)
        ctx = AppContext(settings=settings, gate=Gate(), client=client, router=router)
        with pytest.raises(ConfigError, match=r"'carbon\.country'.*'QQ'"):
            async with carbon()(ctx):
                pass


# --- through joulegate, with a fake meter and the fake backend ---------------------------

Start = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


async def test_non_streaming_response_has_carbon_headers_and_body_fields(
    fake: Any, joulegate_app: Start
) -> None:
    comps = [fake_meter(36.0), carbon()]
    cfg = CarbonSettings(country="FR", pue=1.2)
    async with joulegate_app(fake.url, comps, carbon=cfg) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        models = await c.get(jg.url + "/v1/models")
    energy = r.json()["energy"]
    # 36 J * 1.2 = 43.2 J = 1.2e-5 kWh at 56 g/kWh = 6.72e-4 g.
    assert energy["co2e_g"] == pytest.approx(6.72e-4)
    assert energy["carbon_intensity_g_per_kwh"] == 56.0
    assert energy["carbon_source"] == "table:FRA"
    assert energy["pue"] == 1.2
    assert energy["sci_operational_g"] == energy["co2e_g"]
    assert energy["sci_embodied_g"] > 0
    assert energy["sci_g"] == pytest.approx(energy["co2e_g"] + energy["sci_embodied_g"], rel=1e-5)
    assert energy["sci_g_per_token"] == pytest.approx(energy["sci_g"] / 4, rel=1e-5)
    assert float(r.headers["x-co2e-g"]) == pytest.approx(6.72e-4)
    assert r.headers["x-carbon-intensity-g-per-kwh"] == "56"
    assert r.headers["x-carbon-source"] == "table:FRA"
    assert float(r.headers["x-sci-g"]) == energy["sci_g"]
    assert float(r.headers["x-sci-g-per-token"]) == energy["sci_g_per_token"]
    assert "x-carbon-source" not in models.headers  # not metered, not accounted


async def test_stream_carries_carbon_in_its_energy_chunk(fake: Any, joulegate_app: Start) -> None:
    comps = [fake_meter(7.2e6), carbon()]  # 2 kWh
    cfg = CarbonSettings(provider="static", intensity_g_per_kwh=100.0)
    async with joulegate_app(fake.url, comps, carbon=cfg) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    chunks = [e for e in sse_events(r.content) if isinstance(e, dict)]
    (energy,) = [e["energy"] for e in chunks if "energy" in e]
    assert energy["co2e_g"] == pytest.approx(200.0)
    assert energy["carbon_source"] == "static"
    assert energy["sci_g_per_token"] == pytest.approx(energy["sci_g"] / 4, rel=1e-5)


async def test_live_intensity_is_fetched_in_the_background_and_used(
    fake: Any, joulegate_app: Start
) -> None:
    api = FakeCarbonApi(em_intensity=250)
    comps = [fake_meter(3.6e6), carbon(httpx.ASGITransport(app=api))]  # 1 kWh
    cfg = CarbonSettings(provider="electricitymaps", zone="DE", api_key=api.em_key,
                         electricitymaps_url="http://em.test")  # fmt: skip
    async with joulegate_app(fake.url, comps, carbon=cfg) as jg, httpx.AsyncClient() as c:
        for _ in range(200):
            ready = (await c.get(jg.url + "/readyz")).json()
            (check,) = [ch for ch in ready["checks"] if ch["name"] == "carbon"]
            if check["source"] == "electricitymaps:DE":
                break
            await asyncio.sleep(0.01)
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert check["ok"] is True and check["intensity_g_per_kwh"] == 250.0
    assert r.headers["x-carbon-source"] == "electricitymaps:DE"
    assert r.json()["energy"]["co2e_g"] == pytest.approx(250.0)
    ((path, query, headers),) = api.seen  # one fetch: the TTL has not run out
    assert (path, query) == ("/v3/carbon-intensity/latest", "zone=DE")
    assert headers["auth-token"] == api.em_key


async def test_failing_live_api_falls_back_to_the_table(fake: Any, joulegate_app: Start) -> None:
    api = FakeCarbonApi(mode="status", status=500)
    comps = [fake_meter(3.6e6), carbon(httpx.ASGITransport(app=api))]
    cfg = CarbonSettings(provider="uk", uk_url="http://uk.test")
    async with joulegate_app(fake.url, comps, carbon=cfg) as jg, httpx.AsyncClient() as c:
        for _ in range(200):
            if api.seen:
                break
            await asyncio.sleep(0.01)
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert r.headers["x-carbon-source"] == "table:GBR"
    assert r.json()["energy"]["co2e_g"] == pytest.approx(237.6)
