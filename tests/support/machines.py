"""Loopback "machines" for the machines tests: each a fake backend and a fake wall meter.

A :class:`FakeWallMeter` is an HTTP endpoint in the Prometheus text format, as a
PDU's exporter serves it: ``wall_power_watts`` is its machine's power, set by the
test (a constant per machine, so a request's energy is that power times its
window, and a request measured on the wrong machine shows at once), and
``wall_temperature_celsius`` its temperature. ``failing`` makes it answer 500;
``hold`` makes it keep each scrape unanswered until ``release`` is set (a hung meter).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accounting.ledger.owners import owners_component
from accounting.ledger.routes import route_handlers as ledger_routes
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import BackendSettings, LedgerSettings, MeterSettings, Settings
from config.machines import MachineSettings
from meters import machines_component
from proxy.app import create_app
from proxy.context import Component
from proxy.observability.metrics import metrics_endpoint, prometheus_component
from tests.support.fake_backend import FakeBackend
from tests.support.serving import Running, read_body, serve

SAMPLE_HZ = 50.0
"""How often the fake wall meters are polled (``external_hz``)."""


@dataclass
class FakeWallMeter:
    """A wall meter's Prometheus endpoint (raw ASGI); ``reads`` counts its scrapes."""

    power_w: float = 100.0
    temperature_c: float = 40.0
    failing: bool = False
    reads: int = 0
    hold: bool = False
    held: int = 0
    """Scrapes now kept unanswered."""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point: ``GET /metrics``."""
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.reads += 1
        if self.hold:
            self.held += 1
            await self.release.wait()
            self.held -= 1
        status = 500 if self.failing else 200
        text = (
            f"# TYPE wall_power_watts gauge\nwall_power_watts {self.power_w}\n"
            "# TYPE wall_temperature_celsius gauge\n"
            f"wall_temperature_celsius {self.temperature_c}\n"
        )
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")]})  # fmt: skip
        await send({"type": "http.response.body", "body": text.encode()})


@dataclass
class LoopbackMachine:
    """One machine on loopback: its name, backend and wall meter, and their URLs."""

    name: str
    backend: FakeBackend
    meter: FakeWallMeter
    backend_url: str = ""
    meter_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> MachineSettings:
        """Its ``[[machines]]`` table: remote, read through its wall meter."""
        meters = MeterSettings(
            kinds=("prometheus",), prometheus_url=self.meter_url + "/metrics",
            prometheus_metric="wall_power_watts", prometheus_unit="W",
            prometheus_temperature_metric="wall_temperature_celsius",
            external_hz=SAMPLE_HZ,
        )  # fmt: skip
        backends = (BackendSettings(url=self.backend_url, name=self.name),)
        return MachineSettings(**{"name": self.name, "backends": backends, "meters": meters,
                                  **self.extra})  # fmt: skip


@contextlib.asynccontextmanager
async def loopback_machines(
    specs: Sequence[tuple[str, tuple[str, ...], float]], **extra: Any
) -> AsyncIterator[list[LoopbackMachine]]:
    """Serve one fake backend and one wall meter per ``(name, models, power_w)``;
    ``extra`` goes into every machine's settings (``max_concurrency``, ``cooldown_s``…)."""
    machines = [
        LoopbackMachine(name, FakeBackend(models=models), FakeWallMeter(power_w), extra=dict(extra))
        for name, models, power_w in specs
    ]
    async with contextlib.AsyncExitStack() as stack:
        for m in machines:
            m.backend_url = await stack.enter_async_context(serve(m.backend, lifespan="off"))
            m.meter_url = await stack.enter_async_context(serve(m.meter, lifespan="off"))
        yield machines


def gateway_components() -> list[Component]:
    """The real ledger, the machines' real meters and /metrics, in the real order."""
    return [accounting_resource, owners_component, prometheus_component, auth_component,
            machines_component, record_component]  # fmt: skip


@contextlib.asynccontextmanager
async def gateway(
    machines: Sequence[LoopbackMachine],
    ledger: Path | LedgerSettings,
    *,
    components: list[Component] | None = None,
    **settings: Any,
) -> AsyncIterator[Running]:
    """joulegate in front of ``machines`` with a SQLite ledger at ``ledger`` (a path), or
    the ledger ``ledger`` names; its components are :func:`gateway_components` unless
    given."""
    s = Settings(
        machines=tuple(m.settings() for m in machines),
        ledger=ledger if isinstance(ledger, LedgerSettings) else LedgerSettings(path=str(ledger)),
        **settings,
    )
    routes = [metrics_endpoint, *ledger_routes()]
    chosen = gateway_components() if components is None else components
    app = create_app(s, components=chosen, route_handlers=routes)
    async with serve(app) as url:
        yield Running(url, app)


def chat(model: str) -> dict[str, Any]:
    """A chat request body (the fake backend's delay goes in a header: see :func:`slow`)."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def slow(delay_ms: int) -> dict[str, str]:
    """Headers that make the fake backend take ``delay_ms`` to answer."""
    return {"x-fake-delay-ms": str(delay_ms)}
