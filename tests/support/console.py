"""Helpers for the console's tests: joulegate with its console in front of the fake
backend, served from a thread of its own (a browser's requests must be answered while
the test blocks on Selenium), and Debian's Chromium driven by its own chromedriver.

:func:`console_server` with ``machines`` serves the console in front of loopback
machines instead (:mod:`tests.support.machines`: a fake backend and a fake wall meter
each), through the machines' real gates and samplers.

A machine without Chromium fails these tests loudly, naming what to install: the
Makefile installs ``chromium`` and ``chromium-driver`` on Debian where it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from accounting import SqliteLedger
from accounting.auth import KeyStore
from accounting.forecast.stage import forecast_component
from accounting.ledger.stage import accounting_resource, auth_component, record_component
from config import AuthSettings, LedgerSettings, Settings
from meters import machines_component
from proxy.app import create_app
from proxy.console import console_component
from proxy.context import Component
from tests.support.fake_backend import FakeBackend, serving
from tests.support.ledger import fake_energy
from tests.support.machines import LoopbackMachine, loopback_machines
from tests.support.serving import serve

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MODELS = ("small-model", "big-model")


def console_components() -> list[Component]:
    """The ledger, auth, fixed energy figures, the forecast, the console, the record."""
    return [accounting_resource, auth_component, fake_energy, forecast_component(),
            console_component, record_component]  # fmt: skip


def fleet_console_components() -> list[Component]:
    """The ledger, auth, every machine's real meters, the console, the record."""
    return [accounting_resource, auth_component, machines_component, console_component,
            record_component]  # fmt: skip


@dataclass
class Served:
    """joulegate with its console, served from a thread; ``keys`` by user name."""

    url: str
    ledger_path: Path
    fake: FakeBackend
    loop: asyncio.AbstractEventLoop
    keys: dict[str, str] = field(default_factory=dict)
    machines: list[LoopbackMachine] = field(default_factory=list)
    """With ``machines``: each machine's fake backend and wall meter."""

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine in the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(_wrap(make), self.loop).result(60)

    def client(self) -> httpx.Client:
        """A plain HTTP client of this joulegate (what a script or SDK would do)."""
        return httpx.Client(base_url=self.url, timeout=30)


async def _wrap(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def _make_keys(path: Path) -> dict[str, str]:
    async with SqliteLedger(path) as ledger:
        keys = KeyStore(ledger)
        return {
            "alice": (await keys.create("alice"))[0],
            "bob": (await keys.create("bob"))[0],
            "root": (await keys.create("root", admin=True))[0],
        }


@contextlib.contextmanager
def console_server(
    *,
    fake: FakeBackend | None = None,
    mode: str = "keys",
    components: list[Component] | None = None,
    machines: Sequence[tuple[str, tuple[str, ...], float]] | None = None,
    **settings: Any,
) -> Iterator[Served]:
    """joulegate (keys mode, users alice and bob, admin root) with its console; its
    components are :func:`console_components` unless given. With ``machines`` (each
    ``(name, models, power_w)``): in front of those loopback machines, with
    :func:`fleet_console_components` unless given."""
    folder = Path(tempfile.mkdtemp(prefix="jg-console-"))
    path = folder / "ledger.sqlite3"
    keys = asyncio.run(_make_keys(path)) if mode == "keys" else {}
    backend = fake or FakeBackend(models=MODELS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="console-server", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()
    fleet: list[LoopbackMachine] = []

    async def start() -> tuple[str, FakeBackend]:
        served = await stack.enter_async_context(serving(backend))
        where: dict[str, Any] = {"backend_url": served.url}
        chosen = console_components() if components is None else components
        if machines is not None:
            fleet.extend(await stack.enter_async_context(loopback_machines(machines)))
            where = {"machines": tuple(m.settings() for m in fleet)}
            chosen = fleet_console_components() if components is None else components
        app = create_app(
            Settings(
                ledger=LedgerSettings(path=str(path)),
                auth=AuthSettings(mode=mode),  # type: ignore[arg-type]
                **where,
                **settings,
            ),
            components=chosen,
        )
        url = await stack.enter_async_context(serve(app))
        return url, served

    try:
        url, served = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield Served(url, path, served, loop, keys, fleet)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)


def csrf_of(html: str) -> str:
    """The CSRF token a console page carries."""
    found = re.search(r'name="csrf(?:-token)?" (?:content|value)="([^"]+)"', html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


def sign_in(client: httpx.Client, key: str) -> str:
    """Sign ``client`` in to the console with ``key``; the session's CSRF token."""
    form = client.get("/console/signin")
    answer = client.post(
        "/console/signin", data={"csrf": csrf_of(form.text), "key": key, "next": "usage"}
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/console/usage").text)


def chromium() -> Any:
    """Headless Chromium through Debian's chromedriver (nothing is downloaded); fails
    the test, loudly, on a machine without them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(
            f"the console's browser tests need {' and '.join(missing)}: install Debian's"
            " chromium and chromium-driver (make test does it where it can: apt-get install"
            " -y chromium chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="jg-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    driver.profile_dir = profile
    return driver


@contextlib.contextmanager
def chromium_session() -> Iterator[Any]:
    """:func:`chromium` for a module's tests, quit at the end."""
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, seconds: float = 20) -> WebDriverWait:  # type: ignore[type-arg]
    """A wait for the console's pages, which redraw from fresh data (the Live page every
    second): an element read mid-redraw is stale, and is looked for again."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors since the last call (CSP violations included)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
