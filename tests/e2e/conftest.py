"""End-to-end fixtures: llama.cpp's real ``llama-server``, one per demo model
(SmolLM2-135M and Gemma-3-270M), and real ``joulegate serve`` processes in front of
both (one per configuration), routing by model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.llamacpp import demo_models, free_port, llama_servers

ROOT = Path(__file__).resolve().parents[2]
"""The checkout under test."""
MODEL = "smollm2-135m-instruct"
"""The default model of the suite (the faster one)."""
GEMMA = "gemma-3-270m"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Joulegate:
    """A running ``joulegate serve`` process."""

    url: str
    """Base URL without ``/v1``."""
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK's ``base_url`` is set to."""
        return self.url + "/v1"

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers)."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def log(self) -> str:
        """What the process has printed so far."""
        return (self.data_dir / "joulegate.log").read_text()

    def cli(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``joulegate`` CLI with this instance's environment."""
        return subprocess.run(
            [sys.executable, "-m", "proxy.cli", *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=120,
            check=False,
        )


def launch_joulegate(data: Path, env_overrides: dict[str, str]) -> Joulegate:
    """Start ``joulegate serve`` in ``data`` on a free port, with this process's
    environment less its ``JOULEGATE_*``/``OTEL_*`` plus ``env_overrides``; return once
    ``/healthz`` answers. The caller stops it (:meth:`Joulegate.stop`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOULEGATE_", "OTEL_"))}
    # The child runs in ``data``, so without this it would import whichever joulegate
    # the interpreter has installed (the main checkout's, for an editable install in a
    # worktree) instead of the code under test.
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        JOULEGATE_PORT=str(port),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    env.update(env_overrides)
    with (data / "joulegate.log").open("wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve"],
            env=env,
            cwd=data,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    jg = Joulegate(f"http://127.0.0.1:{port}", data, env, proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(jg.log)
        try:
            if httpx.get(jg.url + "/healthz", timeout=1).status_code == 200:
                return jg
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            jg.stop()
            raise RuntimeError("joulegate did not start:\n" + jg.log)
        time.sleep(0.1)


@pytest.fixture(scope="session")
def llama_urls() -> Iterator[dict[str, str]]:
    """Both demo models, each on its own ``llama-server`` on a free loopback port."""
    with llama_servers(demo_models(), n_ctx=2048) as urls:
        yield urls


@pytest.fixture(scope="session")
def llama_url(llama_urls: dict[str, str]) -> str:
    """SmolLM2's ``llama-server``."""
    return llama_urls[MODEL]


@pytest.fixture(scope="session")
def start_joulegate(
    llama_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Joulegate]]:
    """Start ``joulegate serve`` in front of both models with extra ``JOULEGATE_*`` env."""
    running: list[Joulegate] = []

    def start(**env_overrides: str) -> Joulegate:
        data = tmp_path_factory.mktemp("joulegate")
        env = {
            "JOULEGATE_BACKENDS": ",".join(llama_urls.values()),
            "JOULEGATE_LEDGER_PATH": str(data / "ledger.sqlite3"),
            "JOULEGATE_TELEMETRY_PROVIDER_NAME": "llama.cpp",
            **env_overrides,
        }
        jg = launch_joulegate(data, env)
        running.append(jg)
        return jg

    yield start
    for jg in running:
        jg.stop()


@pytest.fixture(scope="session")
def joulegate(start_joulegate: Callable[..., Joulegate]) -> Joulegate:
    """One joulegate with default settings (open auth) in front of both models."""
    return start_joulegate()
