"""Run the fake backend or joulegate in its own process, for the benchmarks.

python -m bench.serve fake PORT
python -m bench.serve gate PORT BACKEND_URL      # proxy + gate, no stages
python -m bench.serve full PORT BACKEND_URL      # every default stage
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from config import load_settings
from proxy.app import create_app
from proxy.llamacpp import free_port
from tests.fake_backend import FakeBackend

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def spawn(*argv: str) -> Iterator[str]:
    """Run ``python -m ARGV`` with ``PORT`` filled in; yield its URL once it answers."""
    port = free_port()
    args = [a.replace("PORT", str(port)) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(url + "/healthz", timeout=1)  # any answer, even a 404, will do
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str]) -> None:
    """Serve until killed."""
    kind, port = argv[0], int(argv[1])
    if kind == "fake":
        app: Any = FakeBackend()
    else:
        data = tempfile.mkdtemp(prefix="joulegate-bench-")
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("JOULEGATE_")},
            "JOULEGATE_BACKEND_URL": argv[2],
            "JOULEGATE_LEDGER_PATH": os.path.join(data, "ledger.sqlite3"),
            "JOULEGATE_LOG_LEVEL": "warning",
        }
        settings = load_settings(env=env)
        app = create_app(settings, components=[] if kind == "gate" else None)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on" if kind != "fake" else "off",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
