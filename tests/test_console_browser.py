"""The console in a real headless Chromium: sign in, a Playground round trip, the
J/Wh/W toggle, model text rendered inert, and no error in the browser's console."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.console_support import Served, chromium, console_errors, console_server
from tests.fake_backend import FakeBackend

HOSTILE = ("Hi ", "<script>window.__pwned = 1</script>", " and ",
           '<img src="x" onerror="window.__pwned = 2">', " done.")  # fmt: skip


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with console_server(fake=FakeBackend(words=HOSTILE, models=("small-model", "big-model"))) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, seconds: float = 15) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(driver, seconds)


def browser_sign_in(driver: Any, served: Served, user: str) -> None:
    driver.get(f"{served.url}/console/signin")
    driver.find_element(By.ID, "key").send_keys(served.keys[user])
    driver.find_element(By.ID, "signin").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "who")))
    assert driver.find_element(By.ID, "who").text.startswith(user)


def test_sign_in_then_a_playground_round_trip_shows_the_answer_and_its_ledger_energy(
    served: Served, browser: Any
) -> None:
    browser_sign_in(browser, served, "alice")
    browser.get(f"{served.url}/console/playground")
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value("big-model")
    Select(browser.find_element(By.ID, "task")).select_by_value("code")
    browser.find_element(By.ID, "prompt").send_keys("Say hi")
    browser.find_element(By.ID, "send").click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "result-panel")))

    answer = browser.find_element(By.ID, "answer")
    request_id = browser.find_element(By.ID, "r-id").text
    row = served.run(lambda: _row(served, request_id))
    assert row["user"] == "alice" and row["model_served"] == "big-model" and row["task"] == "code"
    # The answer is the backend's text, shown as text: the tags are characters, inert.
    assert "<script>window.__pwned = 1</script>" in answer.text
    assert '<img src="x" onerror="window.__pwned = 2">' in answer.text
    assert answer.find_elements(By.TAG_NAME, "img") == []
    assert answer.find_elements(By.TAG_NAME, "script") == []
    assert browser.execute_script("return window.__pwned === undefined") is True
    # The energy shown is the ledger row's, in J, then Wh, then W (energy / duration).
    assert float(browser.find_element(By.ID, "r-energy").text) == pytest.approx(row["energy_j"])
    browser.find_element(By.ID, "unit-Wh").click()
    assert browser.find_element(By.ID, "energy-label").text == "Energy (Wh)"
    assert float(browser.find_element(By.ID, "r-energy").text) == pytest.approx(
        row["energy_j"] / 3600, rel=1e-4
    )
    browser.find_element(By.ID, "unit-W").click()
    assert browser.find_element(By.ID, "energy-label").text == "Average power (W)"
    assert float(browser.find_element(By.ID, "r-energy").text) == pytest.approx(
        row["energy_j"] / row["duration_s"], rel=1e-3
    )
    assert browser.find_element(By.ID, "unit-W").get_attribute("aria-pressed") == "true"
    assert float(browser.find_element(By.ID, "r-co2e").text) == pytest.approx(row["co2e_g"])
    assert console_errors(browser) == []


async def _row(served: Served, request_id: str) -> dict[str, Any]:
    from accounting import Ledger

    async with Ledger(served.ledger_path) as ledger:
        rows = await ledger.fetchall("SELECT * FROM requests WHERE request_id = ?", [request_id])
    assert rows, f"no ledger row for {request_id}"
    return dict(zip(rows[0].keys(), rows[0], strict=True))
