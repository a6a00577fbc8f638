"""A throw-away PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temp dir.

The server listens on a free loopback port and on a unix socket in its own
directory, trusts local connections, and is stopped (and its directory removed)
at the end of the session. ``initdb`` refuses to run as root, so as root the
directory is handed to ``nobody`` and the binaries run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None if PostgreSQL is not installed."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, check=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgServer:
    """A running test server; ``url`` names its ``postgres`` database."""

    port: int
    socket_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "nobody", "--", *argv]
    return argv


@contextlib.contextmanager
def pg_server(bindir: Path) -> Iterator[PgServer]:
    """Start a fresh cluster; stop and delete it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="joulegate-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    run = subprocess.run
    try:
        run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True, env=env, cwd=root)  # fmt: skip
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                       "-l", str(root / "log"), "start"]),
            check=True, capture_output=True, env=env, cwd=root)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {exc.stderr!r} {log}") from exc
    try:
        yield PgServer(port=port, socket_dir=root)
    finally:
        run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, env=env, cwd=root, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
