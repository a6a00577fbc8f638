"""The ``joulegate`` command: bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def joulegate(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=cwd, env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_bad_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    r = joulegate("serve", cwd=tmp_path, env={"JOULEGATE_MAX_CONCURRENCY": "0"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("joulegate: setting 'max_concurrency': must be between 1 and 1024")


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    r = joulegate("serve", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("joulegate: config file") and "not found" in r.stderr


def test_demo_refuses_a_busy_port_before_starting_the_model(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = joulegate("demo", "--port", str(port), cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"joulegate: cannot listen on 127.0.0.1:{port}")
    assert "starting llama.cpp" not in r.stdout
