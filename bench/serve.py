"""Run the fake backend or joulegate in its own process, for the benchmarks.

python -m bench.serve fake PORT
python -m bench.serve gate PORT BACKEND_URL      # proxy + gate, no stages
python -m bench.serve full PORT BACKEND_URL      # every default stage
"""

from __future__ import annotations

import os
import sys
import tempfile

import uvicorn

from config import load_settings
from proxy.app import create_app
from tests.fake_backend import FakeBackend


def main(argv: list[str]) -> None:
    """Serve until killed."""
    kind, port = argv[0], int(argv[1])
    if kind == "fake":
        app: object = FakeBackend()
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
        http="httptools",  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="on" if kind != "fake" else "off",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
