"""A throw-away PostgreSQL server: ``initdb`` + ``pg_ctl`` in a temp dir.

The tests and the benchmarks both start one, so it lives here (``bench/`` never
imports from ``tests/``; the tests import this). The server listens on a free
loopback port and on a unix socket in its own directory, trusts local connections,
and is stopped (and its directory removed) when the context exits. It can be
stopped and started again on the same port (:meth:`PgServer.stop`,
:meth:`PgServer.start`), as an outage and its end look to joulegate. ``initdb``
refuses to run as root, so as root the directory is handed to ``nobody`` and the
binaries run as that user.
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
from typing import Literal


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


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "nobody", "--", *argv]
    return argv


_ENV = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}


@dataclass(frozen=True)
class PgServer:
    """A running server; ``url`` names its ``postgres`` database."""

    port: int
    socket_dir: Path
    bindir: Path
    fsync: bool = False
    """Off for the tests (nothing to survive a power cut); on for benchmarks of commits."""

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def data_dir(self) -> Path:
        return self.socket_dir / "data"

    def _pg_ctl(self, *args: str, check: bool) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return subprocess.run(_as_owner(argv), check=check, capture_output=True, text=True,
                              env=_ENV, cwd=self.socket_dir)  # fmt: skip

    def start(self) -> None:
        """Start (again) on the same port; returns once it takes connections."""
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
                f" -c fsync={'on' if self.fsync else 'off'}")  # fmt: skip
        try:
            self._pg_ctl("-o", opts, "-w", "-l", str(self.socket_dir / "log"), "start", check=True)
        except subprocess.CalledProcessError as exc:
            log = self.socket_dir / "log"
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"cannot start PostgreSQL: {exc.stderr!r} {text}") from exc

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` ends every session and checkpoints."""
        self._pg_ctl("-m", mode, "-w", "stop", check=True)


@contextlib.contextmanager
def pg_server(bindir: Path, *, fsync: bool = False) -> Iterator[PgServer]:
    """Start a fresh cluster; stop and delete it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="joulegate-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
    server = PgServer(port=_free_port(), socket_dir=root, bindir=bindir, fsync=fsync)
    try:
        subprocess.run(
            _as_owner([str(bindir / "initdb"), "-D", str(server.data_dir), "-U", "postgres",
                       "-A", "trust", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True, env=_ENV, cwd=root,
        )  # fmt: skip
        server.start()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        stderr = getattr(exc, "stderr", "")
        raise RuntimeError(f"cannot start PostgreSQL: {stderr!r} {exc}") from exc
    try:
        yield server
    finally:
        server._pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
