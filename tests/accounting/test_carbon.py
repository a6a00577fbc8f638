"""Carbon intensity: the bundled table, the live providers and the refresh cache."""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest

from accounting.carbon.intensity import (
    ElectricityMaps,
    FixedIntensity,
    GridTable,
    Intensity,
    LiveIntensity,
    LiveProvider,
    UkCarbonIntensity,
    build_source,
)
from config import CarbonSettings, CarbonSourceError, ConfigError, load_settings
from tests.support.fake_carbon import FakeCarbonApi
from tests.support.serving import serve

KEY = FakeCarbonApi.em_key


@pytest.fixture
async def api() -> AsyncIterator[FakeCarbonApi]:
    """Both fake carbon APIs, served on loopback."""
    fake = FakeCarbonApi()
    async with serve(fake, lifespan="off") as url:
        fake.url = url
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client with a short timeout, like the component's but quicker to give up."""
    async with httpx.AsyncClient(timeout=0.2, trust_env=False) as c:
        yield c


def em(api: FakeCarbonApi, key: str = KEY) -> ElectricityMaps:
    return ElectricityMaps(api.url, "DE", key)


# --- the bundled table -------------------------------------------------------------------


def test_table_looks_countries_up_by_iso2_and_iso3_in_any_case() -> None:
    table = GridTable.bundled()
    for code in ("FR", "FRA", "fr", " fra "):
        assert table.intensity(code) == Intensity(56.0, "table:FRA")
    de = table.get("DE")
    assert de is not None
    assert (de.iso3, de.country, de.year, de.g_per_kwh) == ("DEU", "Germany", 2023, 380.9)
    assert table.get("NA") is not None  # Namibia's code is not read as "missing"


def test_every_row_of_the_packaged_csv_is_found_by_both_codes() -> None:
    text = resources.files("accounting").joinpath("data/grid-carbon-intensity.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 213
    table = GridTable.bundled()
    for r in rows:
        by2, by3 = table.get(r["iso2"]), table.get(r["iso3"])
        assert by2 is not None and by2 == by3
        assert by2.g_per_kwh == float(r["gco2e_per_kwh"])
        assert 0 <= by2.g_per_kwh < 1500 and 2000 <= by2.year <= 2030


def test_unknown_country_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'carbon\.country'.*'XX'"):
        build_source(CarbonSettings(country="XX"))
    with pytest.raises(ConfigError, match=r"'carbon\.country'"):
        load_settings(env={"JOULEGATE_CARBON_COUNTRY": "France"})


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (CarbonSettings(), Intensity(475.0, "table:world-average")),
        (CarbonSettings(country="FR"), Intensity(56.0, "table:FRA")),
        (CarbonSettings(provider="static", intensity_g_per_kwh=123.0), Intensity(123.0, "static")),
        (CarbonSettings(provider="static", country="FR"), Intensity(475.0, "static")),
    ],
)
def test_static_and_table_sources_are_fixed(cfg: CarbonSettings, expected: Intensity) -> None:
    source = build_source(cfg)
    assert isinstance(source, FixedIntensity)
    assert source.current() == expected


@pytest.mark.parametrize(
    ("cfg", "fallback"),
    [
        (CarbonSettings(provider="uk"), Intensity(237.6, "table:GBR")),
        (CarbonSettings(provider="uk", country="IE"), Intensity(290.8, "table:IRL")),
        (
            CarbonSettings(provider="electricitymaps", zone="US-CAL-CISO", api_key=KEY),
            Intensity(369.5, "table:USA"),
        ),
        (
            CarbonSettings(provider="electricitymaps", zone="DE", api_key=KEY),
            Intensity(380.9, "table:DEU"),
        ),
        (
            CarbonSettings(provider="electricitymaps", zone="ZZ-1", api_key=KEY),
            Intensity(475.0, "table:world-average"),
        ),
    ],
)
def test_live_sources_fall_back_to_the_table_of_their_country(
    cfg: CarbonSettings, fallback: Intensity
) -> None:
    source = build_source(cfg)
    assert isinstance(source, LiveIntensity)
    assert source.fallback == fallback
    assert source.current() == fallback  # nothing fetched yet


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"JOULEGATE_CARBON_PROVIDER": "electricitymaps", "JOULEGATE_CARBON_API_KEY": "k"},
         "carbon.zone"),
        ({"JOULEGATE_CARBON_PROVIDER": "electricitymaps", "JOULEGATE_CARBON_ZONE": "DE"},
         "carbon.api_key"),
        ({"JOULEGATE_CARBON_UK_URL": "api.example"}, "carbon.uk_url"),
        ({"JOULEGATE_CARBON_PUE": "0.9"}, "carbon.pue"),
    ],
)  # fmt: skip
def test_bad_carbon_settings_stop_start_up_naming_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(env=env)


def test_api_key_is_not_in_the_settings_repr() -> None:
    s = load_settings(
        env={
            "JOULEGATE_CARBON_PROVIDER": "electricitymaps",
            "JOULEGATE_CARBON_ZONE": "DE",
            "JOULEGATE_CARBON_API_KEY": KEY,
        }
    )
    assert s.carbon.api_key == KEY
    assert KEY not in repr(s)
    assert KEY not in repr(ElectricityMaps("http://x", "DE", KEY))


# --- the live providers against fake servers ---------------------------------------------


async def test_electricitymaps_reads_carbon_intensity_with_the_key_in_auth_token(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    assert await em(api).fetch(client) == 302.0
    ((path, query, headers),) = api.seen
    assert (path, query) == ("/v3/carbon-intensity/latest", "zone=DE")
    assert headers["auth-token"] == KEY


async def test_uk_reads_actual_then_forecast(api: FakeCarbonApi, client: httpx.AsyncClient) -> None:
    uk = UkCarbonIntensity(api.url + "/")
    assert await uk.fetch(client) == 180.0
    api.uk_actual = None
    assert await uk.fetch(client) == 190.0
    assert [s[0] for s in api.seen] == ["/intensity", "/intensity"]
    assert "auth-token" not in api.seen[0][2]


def providers(api: FakeCarbonApi) -> list[LiveProvider]:
    return [em(api), UkCarbonIntensity(api.url)]


@pytest.mark.parametrize("which", [0, 1], ids=["electricitymaps", "uk"])
@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("hang", 0, "no answer in time"),
        ("status", 500, "HTTP 500"),
        ("status", 503, "HTTP 503"),
        ("garbage", 0, "not valid JSON"),
    ],
)
async def test_provider_failures_become_carbon_source_errors(
    api: FakeCarbonApi, client: httpx.AsyncClient, which: int, mode: str, status: int, message: str
) -> None:
    api.mode, api.status = mode, status
    provider = providers(api)[which]
    with pytest.raises(CarbonSourceError, match=message) as info:
        await provider.fetch(client)
    assert str(info.value).startswith(provider.label + ":")


async def test_electricitymaps_refused_key_says_which_setting(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    with pytest.raises(CarbonSourceError, match=r"HTTP 401.*carbon\.api_key") as info:
        await em(api, key="wrong-key-456").fetch(client)
    assert "wrong-key-456" not in str(info.value)


@pytest.mark.parametrize("value", [None, "302", True, -5, [1]])
async def test_answers_without_a_usable_number_are_refused(
    api: FakeCarbonApi, client: httpx.AsyncClient, value: object
) -> None:
    api.em_intensity = api.uk_actual = api.uk_forecast = value
    for provider in providers(api):
        with pytest.raises(CarbonSourceError, match=r"carbonIntensity|intensity"):
            await provider.fetch(client)


async def test_unreachable_api_is_a_carbon_source_error(client: httpx.AsyncClient) -> None:
    from proxy.llamacpp import free_port

    with pytest.raises(CarbonSourceError, match="request failed"):
        await UkCarbonIntensity(f"http://127.0.0.1:{free_port()}").fetch(client)


# --- the cache: TTL, stale values, fallback ----------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def test_live_value_goes_stale_then_falls_back_to_the_table(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    clock = Clock()
    table = Intensity(380.9, "table:DEU")
    live = LiveIntensity(em(api), table, ttl_s=900.0, stale_s=3600.0, clock=clock)
    assert live.current() == table and live.age_s() is None

    assert await live.refresh(client) is True
    assert live.current() == Intensity(302.0, "electricitymaps:DE")

    clock.now_s += 900.0  # the TTL is up and the refresh fails: keep the value, marked stale
    api.mode, api.status = "status", 502
    assert await live.refresh(client) is False
    assert live.current() == Intensity(302.0, "electricitymaps:DE;stale")

    clock.now_s += 3600.0  # exactly stale_s past the TTL: still served
    assert live.current() == Intensity(302.0, "electricitymaps:DE;stale")
    clock.now_s += 0.001  # beyond it: the table
    assert live.current() == table

    api.mode, api.em_intensity = "ok", 250
    assert await live.refresh(client) is True  # recovered: fresh again
    assert live.current() == Intensity(250.0, "electricitymaps:DE")
    assert live.age_s() == 0.0


async def test_failure_before_any_value_serves_the_table(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    api.mode = "hang"
    live = LiveIntensity(UkCarbonIntensity(api.url), Intensity(237.6, "table:GBR"),
                         ttl_s=900.0, stale_s=3600.0)  # fmt: skip
    assert await live.refresh(client) is False
    assert live.current() == Intensity(237.6, "table:GBR")
    api.mode = "ok"  # the control: the same source serves the live value once it answers
    assert await live.refresh(client) is True
    assert live.current() == Intensity(180.0, "uk")


async def test_zero_stale_time_falls_back_as_soon_as_the_ttl_is_up(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    clock = Clock()
    live = LiveIntensity(em(api), Intensity(1.0, "table:X"), ttl_s=60.0, stale_s=0.0, clock=clock)
    assert await live.refresh(client) is True
    clock.now_s += 59.5
    assert live.current() == Intensity(302.0, "electricitymaps:DE")  # live until the TTL
    api.mode = "garbage"
    clock.now_s += 1.0
    await live.refresh(client)
    assert live.current() == Intensity(1.0, "table:X")


async def test_background_run_retries_after_failures(
    api: FakeCarbonApi, client: httpx.AsyncClient
) -> None:
    api.mode = "status"
    live = LiveIntensity(em(api), Intensity(1.0, "table:X"), ttl_s=0.02, stale_s=10.0)
    task = asyncio.create_task(live.run(client))
    try:
        for _ in range(200):
            if len(api.seen) >= 2:
                break
            await asyncio.sleep(0.01)
        assert live.current().source == "table:X"
        api.mode = "ok"
        for _ in range(200):
            if live.current().source == "electricitymaps:DE":
                break
            await asyncio.sleep(0.01)
        assert live.current() == Intensity(302.0, "electricitymaps:DE")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_failures_are_logged_without_the_api_key(
    api: FakeCarbonApi, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    live = LiveIntensity(em(api), Intensity(380.9, "table:DEU"), ttl_s=900.0, stale_s=3600.0)
    await live.refresh(client)
    for mode in ("status", "garbage", "hang"):
        api.mode = mode
        await live.refresh(client)
    live.provider = em(api, key="rejected-key-789")
    api.mode = "ok"
    await live.refresh(client)
    failures = [r for r in caplog.records if r.name == "joulegate.carbon"]
    assert len(failures) == 4
    assert all(r.levelno == logging.WARNING for r in failures)
    assert "serving electricitymaps:DE;stale" in failures[0].getMessage()
    assert "HTTP 401" in failures[-1].getMessage()
    assert KEY not in caplog.text
    assert "rejected-key-789" not in caplog.text
