"""The grid's carbon intensity: a fixed number, a bundled per-country table, or a live API.

    IntensitySource           what the carbon stage asks; ``current()`` never does I/O
    ├── FixedIntensity        the ``static`` number or the ``table`` row
    └── LiveIntensity         a live provider's value, cached and refreshed in the
                              background; stale while fetches fail, then the table

    LiveProvider              one carbon API; ``fetch()`` raises CarbonSourceError only
    ├── ElectricityMaps       GET {base}/v3/carbon-intensity/latest?zone=Z, header auth-token
    └── UkCarbonIntensity     GET {base}/intensity, data[0].intensity.actual (else forecast)

Every reading says where it came from (``Intensity.source``): ``static``,
``table:FRA``, ``table:world-average``, ``electricitymaps:DE``, ``uk``, with
``;stale`` appended while a live value is served after failed refreshes. The
Electricity Maps key travels only in the ``auth-token`` header and is never
put in a message or a log line.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

import httpx

from config import CarbonSettings
from config.errors import CarbonSourceError, ConfigError

log = logging.getLogger("joulegate.carbon")

WORLD_AVERAGE_G_PER_KWH = 475.0
"""World-average carbon intensity of electricity (IEA), used where no country is known."""
RETRY_S = 60.0
"""After a failed fetch, try again this soon (or after the TTL if that is shorter)."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Intensity:
    """A carbon intensity and where it came from."""

    g_per_kwh: float
    source: str
    """``static``, ``table:FRA``, ``table:world-average``, ``electricitymaps:DE``, ``uk``;
    live sources get ``;stale`` appended while refreshes fail."""


@dataclass(frozen=True, slots=True)
class CountryIntensity:
    """One row of the bundled table."""

    iso3: str
    iso2: str
    country: str
    year: int
    g_per_kwh: float


class GridTable:
    """Yearly carbon intensity per country (Ember and Energy Institute via Our World in Data)."""

    def __init__(self, rows: Iterable[CountryIntensity]) -> None:
        self._by_code: dict[str, CountryIntensity] = {}
        for row in rows:
            self._by_code[row.iso3.upper()] = row
            self._by_code[row.iso2.upper()] = row

    @classmethod
    def bundled(cls) -> GridTable:
        """The table shipped in ``accounting/data/grid-carbon-intensity.csv``."""
        text = (
            resources.files("accounting")
            .joinpath("data/grid-carbon-intensity.csv")
            .read_text(encoding="utf-8")
        )
        return cls(
            CountryIntensity(
                r["iso3"], r["iso2"], r["country"], int(r["year"]), float(r["gco2e_per_kwh"])
            )
            for r in csv.DictReader(text.splitlines())
        )

    def get(self, code: str) -> CountryIntensity | None:
        """The row for an ISO 3166 alpha-2 or alpha-3 code (any case), or None."""
        return self._by_code.get(code.strip().upper())

    def intensity(self, code: str, *, key: str = "carbon.country") -> Intensity:
        """The table's reading for ``code``; an unknown code is a ConfigError naming ``key``."""
        row = self.get(code)
        if row is None:
            raise ConfigError(
                f"setting {key!r}: {code!r} is not a country in the bundled carbon-intensity "
                "table (use an ISO code such as FR or FRA)"
            )
        return Intensity(row.g_per_kwh, f"table:{row.iso3}")


class IntensitySource(ABC):
    """Gives the carbon intensity to use for a request, without waiting on anything."""

    @abstractmethod
    def current(self) -> Intensity:
        """The intensity to use now."""


class FixedIntensity(IntensitySource):
    """A value that does not change while joulegate runs (``static`` or ``table``)."""

    def __init__(self, reading: Intensity) -> None:
        self._reading = reading

    def current(self) -> Intensity:
        """The fixed reading."""
        return self._reading


class LiveProvider(ABC):
    """One live carbon-intensity API."""

    label: str
    """How readings from it are labelled, e.g. ``electricitymaps:DE``."""

    @abstractmethod
    async def fetch(self, client: httpx.AsyncClient) -> float:
        """The latest intensity in gCO2e/kWh; any failure is a CarbonSourceError."""


class ElectricityMaps(LiveProvider):
    """Electricity Maps' latest carbon intensity for one zone (needs an API key)."""

    def __init__(self, base_url: str, zone: str, api_key: str) -> None:
        self.label = f"electricitymaps:{zone}"
        self._url = f"{base_url.rstrip('/')}/v3/carbon-intensity/latest?zone={quote(zone)}"
        self._headers = {"auth-token": api_key}

    async def fetch(self, client: httpx.AsyncClient) -> float:
        """``carbonIntensity`` of ``/v3/carbon-intensity/latest``."""
        body = await _get_json(
            client, self._url, self.label, self._headers, refused_hint="; check carbon.api_key"
        )
        value = body.get("carbonIntensity") if isinstance(body, dict) else None
        return _check_intensity(value, self.label, "carbonIntensity")


class UkCarbonIntensity(LiveProvider):
    """The UK Carbon Intensity API (National Grid ESO): GB's current half hour, no key."""

    label = "uk"

    def __init__(self, base_url: str) -> None:
        self._url = f"{base_url.rstrip('/')}/intensity"

    async def fetch(self, client: httpx.AsyncClient) -> float:
        """``data[0].intensity.actual``, or its ``forecast`` while the actual is not out."""
        body = await _get_json(client, self._url, self.label)
        try:
            reading = body["data"][0]["intensity"]
            value = reading.get("actual")
            if value is None:
                value = reading.get("forecast")
        except (KeyError, IndexError, TypeError, AttributeError):
            value = None
        return _check_intensity(value, self.label, "data[0].intensity.actual or forecast")


async def _get_json(
    client: httpx.AsyncClient,
    url: str,
    label: str,
    headers: Mapping[str, str] | None = None,
    *,
    refused_hint: str = "",
) -> Any:
    """GET ``url`` and parse JSON, translating every failure into CarbonSourceError."""
    try:
        response = await client.get(url, headers=headers)
    except httpx.TimeoutException as exc:
        raise CarbonSourceError(f"{label}: no answer in time ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise CarbonSourceError(f"{label}: request failed ({type(exc).__name__}: {exc})") from exc
    if response.status_code in (401, 403):
        raise CarbonSourceError(
            f"{label}: access refused (HTTP {response.status_code}){refused_hint}"
        )
    if response.status_code != 200:
        raise CarbonSourceError(f"{label}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise CarbonSourceError(f"{label}: the answer is not valid JSON") from exc


def _check_intensity(value: Any, label: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CarbonSourceError(f"{label}: the answer has no number in {field}")
    if not math.isfinite(value) or value < 0:
        raise CarbonSourceError(f"{label}: {field} is {value!r}, not an intensity")
    return float(value)


class LiveIntensity(IntensitySource):
    """A live provider's value, cached for ``ttl_s`` and refreshed by :meth:`run`.

    While refreshes fail, the last good value is still served, labelled
    ``;stale``, until it is ``stale_s`` past its TTL; then the table's reading
    (``fallback``) is served until a fetch succeeds again.
    """

    def __init__(
        self,
        provider: LiveProvider,
        fallback: Intensity,
        *,
        ttl_s: float,
        stale_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.provider = provider
        self.fallback = fallback
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._clock = clock
        self._value: float | None = None
        self._value_at = 0.0
        self._failing = False

    def current(self) -> Intensity:
        """The cached live value, the same marked stale, or the fallback."""
        value = self._value
        if value is None or self._clock() - self._value_at > self._ttl_s + self._stale_s:
            return self.fallback
        return Intensity(value, self.provider.label + (";stale" if self._failing else ""))

    def age_s(self) -> float | None:
        """Seconds since the last good value was fetched (None before the first)."""
        return None if self._value is None else self._clock() - self._value_at

    async def refresh(self, client: httpx.AsyncClient) -> bool:
        """Fetch once; on failure log why (the key never appears) and keep the old value."""
        try:
            value = await self.provider.fetch(client)
        except CarbonSourceError as exc:
            self._failing = True
            log.warning("carbon intensity fetch failed: %s; serving %s", exc, self.current().source)
            return False
        if self._failing:
            log.info("carbon intensity from %s is back", self.provider.label)
        self._value, self._value_at, self._failing = value, self._clock(), False
        return True

    async def run(self, client: httpx.AsyncClient) -> None:
        """Refresh now, then every ``ttl_s`` (sooner after a failure), until cancelled."""
        while True:
            try:
                ok = await self.refresh(client)
            except Exception:
                log.exception("carbon intensity refresh from %s crashed", self.provider.label)
                self._failing, ok = True, False
            await asyncio.sleep(self._ttl_s if ok else min(self._ttl_s, RETRY_S))


def live_provider(cfg: CarbonSettings) -> LiveProvider | None:
    """The live API ``cfg.provider`` names, or None for ``static`` and ``table``."""
    if cfg.provider == "electricitymaps":
        return ElectricityMaps(cfg.electricitymaps_url, cfg.zone, cfg.api_key)
    if cfg.provider == "uk":
        return UkCarbonIntensity(cfg.uk_url)
    return None


def table_intensity(cfg: CarbonSettings, table: GridTable) -> Intensity:
    """The table's reading for ``carbon.country``, else the live provider's country.

    ``uk`` implies GB and an Electricity Maps zone its leading country code
    (``US-CAL-CISO`` → US); with none of these, the world average.
    """
    if cfg.country:
        return table.intensity(cfg.country)
    implied = {"uk": "GB", "electricitymaps": cfg.zone.split("-")[0]}.get(cfg.provider, "")
    if implied and table.get(implied) is not None:
        return table.intensity(implied)
    return Intensity(WORLD_AVERAGE_G_PER_KWH, "table:world-average")


def build_source(
    cfg: CarbonSettings, table: GridTable | None = None, *, clock: Clock = time.monotonic
) -> IntensitySource:
    """The intensity source the settings describe; bad settings raise ConfigError."""
    if cfg.provider == "static":
        return FixedIntensity(Intensity(cfg.intensity_g_per_kwh, "static"))
    fallback = table_intensity(cfg, GridTable.bundled() if table is None else table)
    provider = live_provider(cfg)
    if provider is None:
        return FixedIntensity(fallback)
    return LiveIntensity(provider, fallback, ttl_s=cfg.ttl_s, stale_s=cfg.stale_s, clock=clock)
