"""``joulegate keys``, ``users``, ``report`` and ``export``: the ledger from the shell.

Every command takes ``--config`` and ``--ledger PATH`` (else ``ledger.path``
from the settings, else the user's data folder). Read commands (``report``,
``export``) never create a ledger. Bad input is one line on standard error
and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any, get_args

import msgspec

from accounting.auth import KeyStore, check_user
from accounting.budgets import BudgetBook, check_limit, new_budget, period_bounds
from accounting.ledger import Ledger, ledger_from_settings
from accounting.ledger.rows import COLUMNS, iso, utcnow
from accounting.reports import By, Format, Unit, build_report, parse_query
from config.cli import add_ledger_options, settings_from
from config.errors import ConfigError, LedgerError
from config.table import render_table
from config.units import J_PER_WH


def _ledger(args: argparse.Namespace) -> Ledger:
    settings = settings_from(args, **{"ledger.path": args.ledger})
    return ledger_from_settings(settings.ledger)


def _run(
    args: argparse.Namespace,
    work: Callable[[Ledger], Awaitable[int]],
    *,
    must_exist: bool = False,
) -> int:
    async def main() -> int:
        ledger = _ledger(args)
        await ledger.open(must_exist=must_exist)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(main())


# -- keys ---------------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    try:
        user = check_user(args.user)
    except ValueError as exc:
        raise ConfigError(f"--user: {exc}") from None

    async def work(ledger: Ledger) -> int:
        key, stored = await KeyStore(ledger).create(user, admin=args.admin)
        print(key)
        role = "admin key" if stored.is_admin else "key"
        print(f"created {role} {stored.prefix}… for {user}; it is shown only this once",
              file=sys.stderr)  # fmt: skip
        return 0

    return _run(args, work)


def _keys_list(args: argparse.Namespace) -> int:
    async def work(ledger: Ledger) -> int:
        keys = KeyStore(ledger)
        await keys.load()
        shown = [k for k in keys.all() if args.all or k.revoked_ts is None]
        if args.format == "json":
            _print_json([
                {"prefix": k.prefix, "user": k.user, "admin": k.is_admin,
                 "created": k.created_ts, "revoked": k.revoked_ts}
                for k in shown
            ])  # fmt: skip
            return 0
        rows = [
            [
                k.prefix + "…",
                k.user,
                "admin" if k.is_admin else "",
                k.created_ts[:19],
                k.revoked_ts[:19] if k.revoked_ts else "",
            ]
            for k in shown
        ]
        print(_table(["key", "user", "role", "created (UTC)", "revoked (UTC)"], rows), end="")
        return 0

    return _run(args, work)


def _keys_revoke(args: argparse.Namespace) -> int:
    if bool(args.key) == bool(args.user):
        raise ConfigError("keys revoke: give a key prefix or --user, not both or neither")

    async def work(ledger: Ledger) -> int:
        keys = KeyStore(ledger)
        count = await (keys.revoke_user(args.user) if args.user else keys.revoke(args.key))
        if not count:
            raise LedgerError(f"no active key matches {args.user or args.key!r}")
        print(f"revoked {count} key{'s' if count > 1 else ''}", file=sys.stderr)
        return 0

    return _run(args, work)


# -- users --------------------------------------------------------------------------


def _set_budget(args: argparse.Namespace) -> int:
    try:
        user = check_user(args.user)
    except ValueError as exc:
        raise ConfigError(f"user: {exc}") from None
    if args.clear and (args.energy_wh is not None or args.co2e_g is not None):
        raise ConfigError("users set-budget: --clear takes no limits")
    budget = None
    if not args.clear:
        try:
            budget = new_budget(
                user,
                args.period,
                check_limit(args.energy_wh, "--energy-wh"),
                check_limit(args.co2e_g, "--co2e-g"),
                names=("--energy-wh", "--co2e-g (or --clear)"),
            )
        except ValueError as exc:
            raise ConfigError(f"users set-budget: {exc}") from None

    async def work(ledger: Ledger) -> int:
        book = BudgetBook(ledger)
        if budget is None:
            had = await book.clear(user)
            print(f"{user}: {'budget removed' if had else 'had no budget'}", file=sys.stderr)
            return 0
        await book.set(budget)
        print(f"{user}: budget set per {args.period} (UTC)", file=sys.stderr)
        return 0

    return _run(args, work)


def _users_list(args: argparse.Namespace) -> int:
    async def work(ledger: Ledger) -> int:
        book = BudgetBook(ledger)
        now = utcnow()
        await book.load(now)
        rows = []
        found = []
        for user, b in sorted(book.budgets.items()):
            energy_j, co2e_g = book.spent(user, b.period, now)
            resets = iso(period_bounds(b.period, now)[1])
            found.append({
                "user": user, "period": b.period,
                "used_wh": energy_j / J_PER_WH,
                "budget_wh": None if b.energy_j is None else b.energy_j / J_PER_WH,
                "used_co2e_g": co2e_g, "budget_co2e_g": b.co2e_g, "resets": resets,
            })  # fmt: skip
            rows.append([
                user, b.period,
                f"{energy_j / J_PER_WH:.4f}", _opt(b.energy_j and b.energy_j / J_PER_WH),
                f"{co2e_g:.4f}", _opt(b.co2e_g), resets[:19],
            ])  # fmt: skip
        if args.format == "json":
            _print_json(found)
            return 0
        head = ["user", "period", "used_Wh", "budget_Wh", "used_co2e_g", "budget_co2e_g",
                "resets (UTC)"]  # fmt: skip
        print(_table(head, rows), end="")
        return 0

    return _run(args, work)


# -- report and export --------------------------------------------------------------


def _period_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="only this user's requests")
    p.add_argument("--since", metavar="DATE", help="from this date or ISO time (UTC)")
    p.add_argument("--until", metavar="DATE", help="to this date (inclusive) or ISO time")
    p.add_argument("--month", metavar="YYYY-MM", help="one calendar month (UTC)")


def _report(args: argparse.Namespace) -> int:
    query = parse_query(vars(args))

    async def work(ledger: Ledger) -> int:
        report = await build_report(ledger, query)
        sys.stdout.write(report.render(args.format, totals=args.totals))
        return 0

    return _run(args, work, must_exist=True)


def _export(args: argparse.Namespace) -> int:
    query = parse_query({k: getattr(args, k) for k in ("user", "since", "until", "month")})
    where, params = query.where()
    try:
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"--output: {exc}") from None

    async def work(ledger: Ledger) -> int:
        count = await _write_rows(ledger, where, params, args.format, out)
        if args.output:
            print(f"wrote {count} rows to {args.output}", file=sys.stderr)
        return 0

    try:
        return _run(args, work, must_exist=True)
    finally:
        if out is not sys.stdout:
            out.close()


async def _write_rows(
    ledger: Ledger, where: str, params: list[Any], form: str, out: IO[str]
) -> int:
    columns = ["id", *COLUMNS]
    writer = csv.writer(out, lineterminator="\n") if form == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    count = 0
    async for row in ledger.iter_rows(where, params):
        data = msgspec.to_builtins(row)
        if writer is None:
            out.write(json.dumps({c: data[c] for c in columns}, ensure_ascii=False) + "\n")
        else:
            writer.writerow([_csv_cell(data[c]) for c in columns])
        count += 1
    return count


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _opt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")) if value else ""
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


def _table(head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)\n"
    return render_table(head, rows, right_align=False)


# -- registration -------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="an aligned table (default) or JSON for scripts")  # fmt: skip


def register(sub: Any) -> None:
    """Add ``keys``, ``users``, ``report`` and ``export`` to the ``joulegate`` command."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    kact = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    create = add_ledger_options(kact.add_parser("create", help="issue a key (printed once)"))
    create.add_argument("--user", required=True, help="who the key belongs to")
    create.add_argument("--admin", action="store_true", help="may read every user's energy")
    create.set_defaults(handler=_keys_create)
    ls = add_ledger_options(
        kact.add_parser("list", help="keys by prefix (never the keys themselves)")
    )
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    _format_arg(ls)
    ls.set_defaults(handler=_keys_list)
    revoke = add_ledger_options(
        kact.add_parser("revoke", help="revoke a key by its prefix, or a user's")
    )
    revoke.add_argument("key", nargs="?", help="the key's prefix (jg-xxxxxxxx) or the key")
    revoke.add_argument("--user", help="revoke every key of this user")
    revoke.set_defaults(handler=_keys_revoke)

    users = sub.add_parser("users", help="per-user energy and carbon budgets")
    uact = users.add_subparsers(dest="users_action", required=True, metavar="ACTION")
    budget = add_ledger_options(
        uact.add_parser("set-budget", help="cap a user's energy and/or carbon")
    )
    budget.add_argument("user")
    budget.add_argument("--energy-wh", type=_number, help="energy limit in Wh per period")
    budget.add_argument("--co2e-g", type=_number, help="carbon limit in gCO2e per period")
    budget.add_argument("--period", choices=("day", "month"), default="month",
                        help="UTC day or calendar month (default month)")  # fmt: skip
    budget.add_argument("--clear", action="store_true", help="remove the user's budget")
    budget.set_defaults(handler=_set_budget)
    ulist = add_ledger_options(uact.add_parser("list", help="budgets and what is used this period"))
    _format_arg(ulist)
    ulist.set_defaults(handler=_users_list)

    report = add_ledger_options(
        sub.add_parser("report", help="energy and CO2e totals from the ledger")
    )
    _period_args(report)
    report.add_argument("--by", choices=get_args(By), default="user")
    report.add_argument("--unit", choices=get_args(Unit), default="Wh")
    report.add_argument("--format", choices=get_args(Format), default="table")
    report.add_argument(
        "--totals", action="store_true", help="end CSV with a TOTAL row (the table always has it)"
    )
    report.set_defaults(handler=_report)

    export = add_ledger_options(
        sub.add_parser("export", help="every ledger row as CSV or JSON lines")
    )
    _period_args(export)
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--output", metavar="FILE", help="write here (default: standard output)")
    export.set_defaults(handler=_export)
