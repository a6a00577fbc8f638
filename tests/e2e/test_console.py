"""The console as a new user meets it after ``make run``: a real browser, a real
joulegate, both demo models on llama.cpp's server. Each model is prompted in the
Playground, each answer shows what it cost (the ledger's figures), and Compare fills
from those requests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from tests.e2e.conftest import GEMMA, MODEL, Joulegate
from tests.support.console import chromium_session, console_errors, wait


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_session() as driver:
        yield driver


def _row(jg: Joulegate, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(jg.data_dir / "ledger.sqlite3") as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return dict(found.fetchone())


def _prompt(browser: Any, jg: Joulegate, model: str) -> dict[str, Any]:
    browser.get(f"{jg.url}/console/playground")
    wait(browser, 60).until(
        lambda d: (
            model
            in [o.get_attribute("value") for o in Select(d.find_element(By.ID, "model")).options]
        )
    )
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    Select(browser.find_element(By.ID, "task")).select_by_value("questions")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("What is the capital of France?")
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("16")
    browser.find_element(By.ID, "send").click()
    wait(browser, 120).until(ec.visibility_of_element_located((By.ID, "result-panel")))
    row = _row(jg, browser.find_element(By.ID, "r-id").text)
    assert row["model_served"] == model and row["task"] == "questions"
    assert browser.find_element(By.ID, "answer").text  # the model's own words
    # What the answer cost, as the ledger has it (the page shows 5 significant digits).
    shown_j = float(browser.find_element(By.ID, "r-energy").text)
    assert shown_j == pytest.approx(row["energy_j"], rel=1e-4)
    assert float(browser.find_element(By.ID, "r-co2e").text) == pytest.approx(
        row["co2e_g"], rel=1e-4
    )
    assert row["energy_j"] > 0 and row["co2e_g"] > 0
    return row


def test_a_new_user_prompts_both_demo_models_and_compares_them(
    joulegate: Joulegate, browser: Any
) -> None:
    rows = {model: _prompt(browser, joulegate, model) for model in (MODEL, GEMMA)}
    browser.get(f"{joulegate.url}/console/compare")
    Select(browser.find_element(By.ID, "period")).select_by_value("all")
    cells = "#kinds[data-period='all'] td[data-n]"
    wait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, cells)) >= 2)
    shown = {
        (td.get_attribute("data-model"), td.get_attribute("data-task")): td
        for td in browser.find_elements(By.CSS_SELECTOR, cells)
    }
    for model, row in rows.items():
        cell = shown[(model, "questions")]
        assert int(cell.get_attribute("data-n")) == 1
        assert float(cell.get_attribute("data-mean")) == pytest.approx(row["energy_j"])
    assert console_errors(browser) == []
