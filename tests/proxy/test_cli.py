"""The ``joulegate`` command: bad input is one line on stderr and exit status 2; a
reader that leaves early (``| head``) gets no traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from accounting import LedgerRow, SqliteLedger
from proxy.cli import main
from tests.support.meters import rapl_tree

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
"""The child runs this checkout's code whatever its working directory."""


def joulegate(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=cwd, env={**ENV, **(env or {})},
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


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["report", "--by", "colour"], "argument --by: invalid choice: 'colour'"),
        (["keys", "list", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["meters", "--seconds", "soon"], "argument --seconds: invalid float value: 'soon'"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("joulegate: error: ")
    assert says in err


def cut_short(argv: list[str], lines: int, cwd: Path) -> tuple[list[str], str, int]:
    """Run joulegate with its output piped into a reader that leaves after ``lines``
    lines (as ``| head``): what the reader got, the standard error and the status."""
    p = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", *argv], cwd=cwd, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    with p:
        got = [p.stdout.readline() for _ in range(lines)]
        p.stdout.close()
        err = p.stderr.read()
    return got, err, p.returncode


def test_export_into_a_reader_that_leaves_stops_quietly(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite3"
    ts = "2025-03-01T12:00:00.000000Z"
    rows = [LedgerRow(request_id=f"r{i}", ts=ts, user="alice", endpoint="chat/completions",
                      energy_j=1.5 * i) for i in range(5000)]  # fmt: skip

    async def fill() -> None:
        async with SqliteLedger(db) as ledger:
            await ledger.append_many(rows)

    asyncio.run(fill())  # far more than a pipe holds, so writing must meet the closed end
    got, err, code = cut_short(["export", "--ledger", str(db)], 1, tmp_path)
    assert got[0].startswith("id,request_id,")
    assert (err, code) == ("", 141)


def test_meters_into_a_reader_that_leaves_stops_quietly(tmp_path: Path) -> None:
    rapl_tree(tmp_path / "powercap")
    config = tmp_path / "joulegate.toml"
    config.write_text(f'[meters]\nkinds = ["rapl"]\nrapl_root = "{tmp_path / "powercap"}"\n')
    got, err, code = cut_short(["meters", "--config", str(config), "--seconds", "4"], 2, tmp_path)
    assert got[0] == "meters found (in detection order):\n"
    assert got[1].startswith("  rapl: cpu (2 zones), dram (2 zones)")
    assert (err, code) == ("", 141)


def _subcommands() -> list[list[str]]:
    import argparse

    from proxy.cli import build_parser

    out: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize("words", _subcommands(), ids=lambda w: " ".join(w) or "joulegate")
def test_every_command_prints_its_help(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    assert "usage: joulegate" in capsys.readouterr().out
