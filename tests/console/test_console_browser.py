"""The console in a real headless Chromium: sign in, a Playground round trip, the
J/Wh/W toggle, model text rendered inert, Compare equal to the report, Usage equal to
``joulegate report``, a non-admin refused, and no error in the browser's console."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from accounting import SqliteLedger
from accounting.study.dataset import StudyRow
from accounting.study.summary import summarise
from proxy.cli import main as joulegate
from tests.support.console import Served, chromium_session, console_errors, console_server, wait
from tests.support.fake_backend import FakeBackend

HOSTILE = ("Hi ", "<script>window.__pwned = 1</script>", " and ",
           '<img src="x" onerror="window.__pwned = 2">', " done.")  # fmt: skip


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with console_server(fake=FakeBackend(words=HOSTILE, models=("small-model", "big-model"))) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_session() as driver:
        yield driver


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
    async with SqliteLedger(served.ledger_path) as ledger:
        rows = await ledger.fetchall("SELECT * FROM requests WHERE request_id = ?", [request_id])
    assert rows, f"no ledger row for {request_id}"
    return dict(zip(rows[0].keys(), rows[0], strict=True))


def _traffic(served: Served) -> None:
    """Requests by alice (two models, two tasks) and bob, through /v1 as any client."""
    with served.client() as c:
        for user, model, task, count in (("alice", "small-model", "code", 3),
                                          ("alice", "big-model", "code", 2),
                                          ("alice", "small-model", "math", 2),
                                          ("bob", "big-model", "sql", 2)):  # fmt: skip
            for _ in range(count):
                r = c.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                    headers={
                        "authorization": f"Bearer {served.keys[user]}",
                        "x-joulegate-task": task,
                    },
                )
                assert r.status_code == 200, r.text


def _report(served: Served, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert joulegate(["report", "--ledger", str(served.ledger_path), "--format", "json",
                      *args]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def test_compare_and_usage_show_the_reports_numbers(
    served: Served, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _traffic(served)
    browser_sign_in(browser, served, "alice")
    browser.get(f"{served.url}/console/compare")
    Select(browser.find_element(By.ID, "period")).select_by_value("all")
    # The table for "all", not the first period's that it replaces (that one goes stale).
    wait(browser).until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, "#kinds[data-period='all'] #heat-measured td[data-n]"
        )
    )
    cells = {
        (td.get_attribute("data-model"), td.get_attribute("data-task")): td
        for td in browser.find_elements(By.CSS_SELECTOR, "#heat-measured td[data-n]")
    }
    by_model = _report(served, capsys, "--user", "alice", "--by", "model", "--unit", "J")
    assert {m for m, _ in cells} == {g["model"] for g in by_model["groups"]}
    for group in by_model["groups"]:
        cell = cells[(group["model"], "(all)")]
        assert int(cell.get_attribute("data-n")) == group["requests"]
        mean_j = float(cell.get_attribute("data-mean"))
        assert mean_j * group["requests"] == pytest.approx(group["energy_j"])
    assert int(cells[("small-model", "math")].get_attribute("data-n")) == 2
    assert console_errors(browser) == []

    browser.get(f"{served.url}/console/usage")
    wait(browser).until(
        lambda d: d.find_element(By.ID, "t-requests").text not in ("", "\N{EN DASH}")
    )
    total = _report(served, capsys, "--user", "alice", "--by", "day")["totals"]
    assert int(browser.find_element(By.ID, "t-requests").text) == total["requests"]
    assert float(browser.find_element(By.ID, "t-energy").text) == pytest.approx(
        total["energy_wh"], rel=1e-5
    )
    assert float(browser.find_element(By.ID, "t-co2e").text) == pytest.approx(
        total["co2e_g"], rel=1e-5
    )
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#requests tbody tr")) > 1)
    rows = browser.find_elements(By.CSS_SELECTOR, "#requests tbody tr")
    assert len(rows) == total["requests"]  # every one of alice's, none of bob's
    assert console_errors(browser) == []


def test_a_non_admin_is_refused_admin_pages_and_another_users_request(
    served: Served, browser: Any
) -> None:
    _traffic(served)
    with served.client() as c:
        bobs = c.get(
            "/v1/energy/requests", headers={"authorization": f"Bearer {served.keys['bob']}"}
        )
    bob_request = bobs.json()["data"][0]["request_id"]
    browser_sign_in(browser, served, "alice")
    for page in ("admin", "live"):
        browser.get(f"{served.url}/console/{page}")
        assert "is for admin keys" in browser.find_element(By.ID, "error-message").text
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav a")] == [
        "Playground",
        "Compare",
        "Usage",
    ]
    browser.get(f"{served.url}/console/requests/{bob_request}")
    wait(browser).until(lambda d: d.find_element(By.ID, "record").text)
    assert "No such request" in browser.find_element(By.ID, "record").text
    assert bob_request not in browser.find_element(By.ID, "requests").text
    # The 403 pages and the 404 answer are logged by the browser as failed loads: those
    # are the refusals under test, and nothing else may be.
    errors = console_errors(browser)
    assert errors and all("403" in e or "404" in e for e in errors), errors


def test_an_admin_creates_a_key_shown_once_then_revokes_it(served: Served, browser: Any) -> None:
    browser_sign_in(browser, served, "root")
    browser.get(f"{served.url}/console/admin")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))
    browser.find_element(By.ID, "new-user").send_keys("carol")
    browser.find_element(By.ID, "create").click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "new-key-box")))
    key = browser.find_element(By.ID, "new-key").text
    assert key.startswith("jg-")
    chat = {"model": "small-model", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    with served.client() as c:
        used = c.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"})
    assert used.status_code == 200
    row = f"#keys tr[data-prefix='{key[:11]}']"
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    browser.find_element(By.CSS_SELECTOR, f"{row} button").click()
    wait(browser).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"{row} td:nth-child(5)").text != ""
    )
    assert key not in browser.page_source.replace(browser.find_element(By.ID, "new-key").text, "")
    with served.client() as c:
        refused = c.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"}
        )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"
    assert console_errors(browser) == []


def test_a_studys_summary_json_opens_in_compare(
    served: Served, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rows = [
        StudyRow(model=m, task=t, prompt_id=f"{t}-{i}", repeat=1, prompt="p", response="r",
                 prompt_tokens=10, completion_tokens=20 + i, duration_s=0.5, client_s=0.6,
                 energy_j=e + i, energy_dynamic_j=e / 2, co2e_g=e / 1e4, sci_g=e / 9e3,
                 request_id=f"{m}-{t}-{i}", ts="2026-01-01T00:00:00Z")
        for m, e in (("smollm2", 10.0), ("gemma3", 30.0))
        for t in ("code", "sql")
        for i in range(3)
    ]  # fmt: skip
    summary = summarise(rows, ["smollm2", "gemma3"], ["code", "sql"])
    path = tmp_path_factory.mktemp("study") / "summary.json"
    path.write_text(json.dumps(summary.to_json()))
    browser_sign_in(browser, served, "alice")
    browser.get(f"{served.url}/console/compare")
    browser.find_element(By.ID, "study-file").send_keys(str(path))
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heat-study td[data-n]"))
    cell = browser.find_element(
        By.CSS_SELECTOR, "#heat-study td[data-model='gemma3'][data-task='sql']"
    )
    expected = summary.cell("energy_j", "gemma3", "sql")
    assert expected is not None
    assert float(cell.get_attribute("data-mean")) == pytest.approx(expected.mean)
    assert int(cell.get_attribute("data-n")) == 3
    assert "Study summary.json" in browser.find_element(By.ID, "source").text
    assert console_errors(browser) == []


def test_an_admin_sees_live_with_the_one_machine_of_a_single_host(
    served: Served, browser: Any
) -> None:
    browser_sign_in(browser, served, "root")
    browser.get(f"{served.url}/console/live")
    card = "section.machine[data-machine='local']"
    wait(browser).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"{card} .m-inflight").text == "0 of 1"
    )
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".m-name")] == ["local"]
    # No machine to choose and no gateway total beside the machine's own figures.
    assert not browser.find_element(By.ID, "chart-machine").is_displayed()
    assert browser.find_elements(By.ID, "g-power") == []
    backends = browser.find_element(By.CSS_SELECTOR, f"{card} .m-backends").text
    assert "big-model, small-model" in backends
    assert console_errors(browser) == []
