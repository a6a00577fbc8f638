"""The Live page in a real headless Chromium, in front of two loopback machines (each
a fake backend and a fake wall meter of its own power): a panel per machine with its
name, power and queue, the gateway's total, the chart's machine selector, and no
error in the browser's console."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.support.console import Served, chromium_session, console_errors, console_server, wait
from tests.support.machines import chat

SPECS = [("rack-a", ("small",), 100.0), ("rack-b", ("large",), 300.0)]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with console_server(machines=SPECS, mode="open") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_session() as driver:
        yield driver


def figure(driver: Any, machine: str, name: str) -> str:
    card = driver.find_element(By.CSS_SELECTOR, f"section.machine[data-machine='{machine}']")
    return str(card.find_element(By.CLASS_NAME, name).text)


def watts(text: str) -> float | None:
    try:
        return float(text.split()[0].replace(",", ""))
    except (ValueError, IndexError):
        return None


def legend(driver: Any) -> list[str]:
    labels = driver.find_elements(By.CSS_SELECTOR, "#power-chart .u-legend .u-series .u-label")
    return [e.text for e in labels if e.text and e.text != "Time"]


def test_live_shows_each_machine_with_its_name_power_and_queue(
    served: Served, browser: Any
) -> None:
    a = served.machines[0]
    hold = {"x-fake-hold": "1"}
    with served.client() as c, ThreadPoolExecutor(2) as pool:
        # rack-a serves one request and queues another; rack-b stays idle.
        held = [pool.submit(c.post, "/v1/chat/completions", json=chat("small"), headers=hold)
                for _ in range(2)]  # fmt: skip
        browser.get(f"{served.url}/console/live")
        wait(browser).until(lambda d: figure(d, "rack-a", "m-waiting").startswith("1 "))
        wait(browser).until(
            lambda d: all(watts(figure(d, m, "m-power")) for m in ("rack-a", "rack-b"))
        )
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "section.machine .m-name")]
        assert names == ["rack-a", "rack-b"]
        assert watts(figure(browser, "rack-a", "m-power")) == pytest.approx(100.0, rel=0.02)
        assert watts(figure(browser, "rack-b", "m-power")) == pytest.approx(300.0, rel=0.02)
        assert figure(browser, "rack-a", "m-inflight") == "1 of 1"
        assert figure(browser, "rack-a", "m-state") == "serving"
        assert figure(browser, "rack-b", "m-inflight") == "0 of 1"
        assert figure(browser, "rack-b", "m-waiting").startswith("0 ")
        assert figure(browser, "rack-b", "m-state") == "idle"
        assert figure(browser, "rack-a", "m-meters") == "prometheus (measured)"
        assert "small" in figure(browser, "rack-a", "m-backends")
        assert "large" not in figure(browser, "rack-a", "m-backends")
        assert watts(browser.find_element(By.ID, "g-power").text) == pytest.approx(400, rel=0.02)
        assert browser.find_element(By.ID, "g-waiting").text == "1"
        served.loop.call_soon_threadsafe(a.backend.release)
        assert [f.result(30).status_code for f in held] == [200, 200]
    # One chart: every machine's total, or one machine's components.
    chosen = Select(browser.find_element(By.ID, "chart-machine"))
    assert [o.get_attribute("value") for o in chosen.options] == ["*", "rack-a", "rack-b"]
    wait(browser).until(lambda d: legend(d) == ["rack-a (W)", "rack-b (W)"])
    chosen.select_by_value("rack-b")
    wait(browser).until(lambda d: legend(d) == ["machine (W)"])
    wait(browser).until(lambda d: figure(d, "rack-a", "m-inflight") == "0 of 1")
    assert console_errors(browser) == []
