"""``joulegate keys`` and ``joulegate users``: what an operator types and sees."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from accounting import SqliteLedger
from accounting.auth import KeyStore
from accounting.budgets import BudgetBook
from proxy.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_keys(path: Path) -> KeyStore:
    async def load() -> KeyStore:
        async with SqliteLedger(path) as ledger:
            keys = KeyStore(ledger)
            await keys.load()
        return keys

    return asyncio.run(load())


def stored_budgets(path: Path) -> BudgetBook:
    async def load() -> BudgetBook:
        async with SqliteLedger(path) as ledger:
            book = BudgetBook(ledger)
            await book.load()
        return book

    return asyncio.run(load())


def test_keys_create_prints_the_key_once_and_list_shows_only_its_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "l.sqlite3")
    code, out, err = run(capsys, "keys", "create", "--user", "alice", "--admin", "--ledger", db)
    key = out.strip()
    assert code == 0 and key.startswith("jg-") and "shown only this once" in err
    code, listed, _ = run(capsys, "keys", "list", "--ledger", db)
    assert code == 0 and key not in listed
    assert key[:11] in listed and "alice" in listed and "admin" in listed


def test_keys_revoke_by_prefix_or_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "l.sqlite3"
    keys = []
    for user in ("bob", "bob", "carol"):
        assert main(["keys", "create", "--user", user, "--ledger", str(db)]) == 0
        keys.append(capsys.readouterr().out.strip())
    assert run(capsys, "keys", "revoke", keys[2][:11], "--ledger", str(db))[0] == 0
    assert run(capsys, "keys", "revoke", "--user", "bob", "--ledger", str(db))[0] == 0
    assert all(k.revoked_ts for k in stored_keys(db).all())
    _, listed, _ = run(capsys, "keys", "list", "--ledger", str(db))
    assert listed == "(none)\n"
    code, _, err = run(capsys, "keys", "revoke", keys[0][:11], "--ledger", str(db))
    assert code == 2 and err.count("\n") == 1 and "no active key" in err


def test_set_budget_stores_joules_and_grams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "l.sqlite3")
    assert main(["users", "set-budget", "alice", "--energy-wh", "2.5", "--co2e-g", "40",
                 "--period", "day", "--ledger", db]) == 0  # fmt: skip
    assert main(["users", "set-budget", "bob", "--co2e-g", "10", "--ledger", db]) == 0
    book = stored_budgets(Path(db))
    assert book.budgets["alice"].energy_j == 2.5 * 3600 and book.budgets["alice"].co2e_g == 40
    assert book.budgets["alice"].period == "day"
    assert book.budgets["bob"].energy_j is None and book.budgets["bob"].period == "month"
    _, listed, _ = run(capsys, "users", "list", "--ledger", db)
    assert "alice" in listed and "2.5000" in listed
    assert main(["users", "set-budget", "alice", "--clear", "--ledger", db]) == 0
    _, listed, _ = run(capsys, "users", "list", "--ledger", db)
    assert "alice" not in listed and "bob" in listed


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create"],
        ["keys", "create", "--user", "  "],
        ["keys"],
        ["keys", "revoke"],
        ["users", "set-budget", "alice"],
        ["users", "set-budget", "alice", "--energy-wh", "-1"],
        ["users", "set-budget", "alice", "--energy-wh", "lots"],
        ["users", "set-budget", "alice", "--period", "week", "--energy-wh", "1"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*argv, "--ledger", str(tmp_path / "l.sqlite3")])
    except SystemExit as exc:
        code = int(exc.code or 0)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("joulegate")


def test_keys_list_and_users_list_speak_json_for_scripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "l.sqlite3")
    _, out, _ = run(capsys, "keys", "create", "--user", "alice", "--admin", "--ledger", db)
    key = out.strip()
    run(capsys, "keys", "create", "--user", "bob", "--ledger", db)
    run(capsys, "keys", "revoke", "--user", "bob", "--ledger", db)
    run(capsys, "users", "set-budget", "alice", "--energy-wh", "2.5", "--ledger", db)
    code, listed, _ = run(capsys, "keys", "list", "--all", "--format", "json", "--ledger", db)
    keys = {k["user"]: k for k in json.loads(listed)}
    assert code == 0 and key not in listed
    assert keys["alice"]["prefix"] == key[:11] and keys["alice"]["admin"] is True
    assert keys["alice"]["revoked"] is None and keys["bob"]["revoked"].startswith("20")
    code, active, _ = run(capsys, "keys", "list", "--format", "json", "--ledger", db)
    assert [k["user"] for k in json.loads(active)] == ["alice"]
    code, budgets, _ = run(capsys, "users", "list", "--format", "json", "--ledger", db)
    (alice,) = json.loads(budgets)
    assert code == 0
    assert {k: alice[k] for k in ("user", "period", "used_wh", "budget_wh", "budget_co2e_g")} == {
        "user": "alice", "period": "month", "used_wh": 0.0, "budget_wh": 2.5,
        "budget_co2e_g": None,
    }  # fmt: skip
    assert alice["resets"].endswith("Z") or "+00:00" in alice["resets"]
