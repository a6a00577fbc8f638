"""The carbon component: CO2eq and SCI for every metered request.

It runs after the meters stage. For each gated request it takes the metered
energy (``ex.energy_j``), applies the PUE, and multiplies by the carbon
intensity its source gives *now* (no network on the request's path: live
values are fetched by a background task started in the component's lifespan).
It then adds the SCI (operational ``E * I`` plus the embodied share ``M`` for
the request's window, both kept) per request and per output token, as one record on
the exchange (a :class:`~proxy.figures.CarbonFigures`, ``ex.carbon``). The hardware's
embodied emissions ``TE`` are chosen once at start-up from the
:class:`~proxy.host.Host` the meters found (:mod:`accounting.carbon.embodied`)
and named in its ``embodied_model``.
:mod:`proxy.render` shows them (the ``energy`` object, ``x-co2e-g``,
``x-carbon-intensity-g-per-kwh``, ``x-carbon-source``, ``x-sci-g``,
``x-sci-operational-g``, ``x-sci-embodied-g`` and ``x-sci-g-per-token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from accounting.carbon import sci
from accounting.carbon.embodied import Embodied, embodied_for
from accounting.carbon.intensity import (
    Clock,
    GridTable,
    IntensitySource,
    LiveIntensity,
    build_source,
)
from config import CarbonSettings
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.figures import CarbonFigures
from proxy.host import Host

log = logging.getLogger("joulegate.carbon")

FETCH_TIMEOUT_S = 10.0
"""Limit for one call to a live carbon API (it runs in the background)."""


class CarbonStage(Stage):
    """Adds CO2eq and SCI to each gated request in ``on_finished``."""

    name = "carbon"

    def __init__(
        self, source: IntensitySource, cfg: CarbonSettings, embodied: Embodied | None = None
    ) -> None:
        self._source = source
        self._cfg = cfg
        override = cfg.embodied_g if cfg.embodied_g >= 0 else None
        self.embodied = embodied or embodied_for(None, override)

    async def on_finished(self, ex: Exchange) -> None:
        """Account the request's carbon from its energy and window."""
        if not ex.gated:
            return
        cfg = self._cfg
        reading = self._source.current()
        reserved_s = ex.window.duration_s or 0.0
        total_embodied_g = self.embodied.total_g
        embodied_g = sci.embodied_g(
            total_embodied_g, reserved_s, cfg.lifetime_s, cfg.resource_share
        )
        figures = CarbonFigures(
            intensity_g_per_kwh=reading.g_per_kwh,
            source=reading.source,
            pue=cfg.pue,
            sci_embodied_g=embodied_g,
            embodied_model=self.embodied.model,
        )
        if ex.energy_j is not None:
            score = sci.sci(
                energy_kwh=sci.kwh_from_j(ex.energy_j * cfg.pue),
                intensity_g_per_kwh=reading.g_per_kwh,
                total_embodied_g=total_embodied_g,
                reserved_s=reserved_s,
                lifetime_s=cfg.lifetime_s,
                resource_share=cfg.resource_share,
            )
            figures = replace(
                figures,
                co2e_g=score.operational_g,
                sci_operational_g=score.operational_g,
                sci_g=score.total_g,
                sci_g_per_token=score.per(ex.completion_tokens),
            )
        ex.carbon = figures


def _ready(source: IntensitySource, embodied: Embodied) -> dict[str, Any]:
    reading = source.current()
    check: dict[str, Any] = {
        "name": "carbon",
        "ok": True,  # a failing live API falls back to the table; requests are unaffected
        "source": reading.source,
        "intensity_g_per_kwh": reading.g_per_kwh,
        "embodied_model": embodied.model,
        "embodied_g": embodied.total_g,
    }
    if isinstance(source, LiveIntensity):
        age_s = source.age_s()
        check["live_age_s"] = None if age_s is None else round(age_s, 1)
    return check


def carbon(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    clock: Clock = time.monotonic,
    table: GridTable | None = None,
) -> Component:
    """The carbon component; tests pass a ``transport`` standing in for the live API.

    The intensity source is built at start-up (an unknown ``carbon.country`` stops
    it with a ConfigError) and published with ``ctx.publish``, and so is the
    :class:`~accounting.carbon.embodied.Embodied` chosen for the machine the meters
    published (a generic server when no meters run). A live source
    gets its own HTTP client and a background refresh task for the app's lifetime.
    """

    @contextlib.asynccontextmanager
    async def component(ctx: AppContext) -> AsyncIterator[Stage]:
        cfg = ctx.settings.carbon
        source = build_source(cfg, table, clock=clock)
        ctx.publish(source)
        override = cfg.embodied_g if cfg.embodied_g >= 0 else None
        embodied = embodied_for(ctx.get(Host), override)
        ctx.publish(embodied)
        log.info("embodied emissions: %s", embodied.model)
        ctx.ready_checks.append(lambda: _ready(source, embodied))
        if not isinstance(source, LiveIntensity):
            yield CarbonStage(source, cfg, embodied)
            return
        async with httpx.AsyncClient(
            transport=transport,
            timeout=FETCH_TIMEOUT_S,
            headers={"accept": "application/json", "user-agent": "joulegate"},
            trust_env=transport is None,  # real deployments may need HTTPS_PROXY; tests not
        ) as client:
            task = asyncio.create_task(source.run(client), name="carbon-refresh")
            try:
                yield CarbonStage(source, cfg, embodied)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return component
