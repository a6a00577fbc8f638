"""``make screenshots``: PNGs of each console page, at a laptop's and a phone's width,
for the docs (``docs/assets/console/``).

joulegate runs with its real components (meters, carbon, forecast) in front of the
tests' fake backend serving two models; a little traffic from three users fills the
ledger first, so Compare, Usage and Live have something to show. Then Live once more
in front of four loopback machines (a fake backend and a fake wall meter each), some
busy with a queue and one with a failing meter (``live-machines-*.png``).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from proxy.app import default_components
from tests.support.console import Served, chromium, console_server
from tests.support.fake_backend import FakeBackend
from tests.support.machines import chat

OUT = Path("docs/assets/console")
SIZES = {"laptop": (1366, 900), "phone": (390, 844)}
WORDS = ("Energy", " is", " measured", " per", " request", ",", " in", " joules", ".")
PROMPTS = (
    ("alice", "small-model", "code"),
    ("alice", "big-model", "code"),
    ("alice", "small-model", "math"),
    ("alice", "big-model", "questions"),
    ("bob", "big-model", "sql"),
    ("bob", "small-model", "translation"),
)


def _traffic(served: Served) -> None:
    with served.client() as c:
        for i in range(36):
            user, model, task = PROMPTS[i % len(PROMPTS)]
            c.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "max_tokens": 8 + 4 * (i % 5),
                    "messages": [{"role": "user", "content": "Explain joules"}],
                },
                headers={
                    "authorization": f"Bearer {served.keys[user]}",
                    "x-joulegate-task": task,
                    "x-fake-chunk-delay-ms": "5",
                },
            ).raise_for_status()


def _sign_in(driver: Any, served: Served, user: str) -> None:
    driver.get(f"{served.url}/console/signin")
    driver.find_element(By.ID, "key").send_keys(served.keys[user])
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "who"))


def _shoot(driver: Any, name: str) -> None:
    for size, (width, height) in SIZES.items():
        driver.set_window_size(width, height)
        time.sleep(0.8)  # charts redraw at the new width
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height, full + 120), 4000))
        time.sleep(0.4)
        path = OUT / f"{name}-{size}.png"
        driver.save_screenshot(str(path))
        print(path)


FLEET = (
    ("gpu-a", ("small-model",), 243.0),
    ("gpu-b", ("small-model", "big-model"), 318.0),
    ("gpu-c", ("big-model",), 187.0),
    ("cpu-d", ("small-model",), 96.0),
)


def fleet(machines: tuple[tuple[str, tuple[str, ...], float], ...], name: str) -> None:
    """Live in front of ``machines`` after a little traffic: five requests held for the
    first machine's model (its machines busy, the rest queued), the last one's meter
    failing."""
    with console_server(machines=machines, components=default_components()) as served:
        driver = chromium()
        try:
            alice = {"authorization": f"Bearer {served.keys['alice']}"}
            with served.client() as c:
                for _ in range(len(machines)):
                    for model in ("small-model", "big-model"):
                        c.post(
                            "/v1/chat/completions",
                            json=chat(model),
                            headers={**alice, "x-fake-delay-ms": "40"},
                        ).raise_for_status()
            served.machines[-1].meter.failing = True
            first = served.machines[0]
            ask = chat(first.backend.models[0])
            with served.client() as c, ThreadPoolExecutor(5) as pool:
                held = [
                    pool.submit(
                        c.post,
                        "/v1/chat/completions",
                        json=ask,
                        headers={**alice, "x-fake-hold": "1"},
                    )
                    for _ in range(5)
                ]
                driver.set_window_size(*SIZES["laptop"])
                _sign_in(driver, served, "root")
                driver.get(f"{served.url}/console/live")
                time.sleep(6.0)  # a few seconds of history in the chart
                _shoot(driver, name)
                for m in served.machines:
                    served.loop.call_soon_threadsafe(m.backend.release)
                for f in held:
                    f.result(30).raise_for_status()
        finally:
            driver.quit()


def main() -> int:
    """Write the screenshots; print their paths."""
    OUT.mkdir(parents=True, exist_ok=True)
    fake = FakeBackend(words=WORDS, models=("small-model", "big-model"))
    with console_server(fake=fake, components=default_components()) as served:
        _traffic(served)
        driver = chromium()
        try:
            driver.set_window_size(*SIZES["laptop"])
            driver.get(f"{served.url}/console/signin")
            _shoot(driver, "signin")
            _sign_in(driver, served, "root")
            driver.get(f"{served.url}/console/playground")
            WebDriverWait(driver, 15).until(
                lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2
            )
            Select(driver.find_element(By.ID, "task")).select_by_value("questions")
            driver.find_element(By.ID, "prompt").send_keys("What is a joule, in one sentence?")
            time.sleep(1.0)  # the forecast
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.ID, "result-panel").is_displayed()
            )
            _shoot(driver, "playground")
            for page in ("compare", "usage", "live", "admin"):
                driver.set_window_size(*SIZES["laptop"])
                driver.get(f"{served.url}/console/{page}")
                time.sleep(3.0 if page == "live" else 1.5)
                if page == "compare":
                    Select(driver.find_element(By.ID, "period")).select_by_value("all")
                    time.sleep(1.0)
                _shoot(driver, page)
        finally:
            driver.quit()
    fleet(FLEET, "live-machines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
