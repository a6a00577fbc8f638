"""Reports and export: totals equal the rows in every unit; nobody reads another's rows."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting import LedgerRow
from accounting.auth import KeyStore
from accounting.reports import build_report, parse_query
from config import AuthSettings, BadRequest
from config.units import J_PER
from proxy.cli import main
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import Store, accounting_components
from tests.support.rows import USERS, generated
from tests.support.serving import JoulegateApp


def fill(store: Store, rows: list[LedgerRow]) -> None:
    """Write ``rows`` from outside any event loop (for the CLI tests, which run their own)."""

    async def append() -> None:
        async with store.ledger() as ledger:
            await ledger.append_many(rows)

    asyncio.run(append())


def key_of(row: LedgerRow, by: str) -> str:
    if by == "model":
        return row.model_served or row.model_requested or "(none)"
    return {"user": row.user, "day": row.ts[:10], "endpoint": row.endpoint}[by]


@pytest.mark.parametrize("unit", ["J", "Wh", "kWh"])
@pytest.mark.parametrize("by", ["user", "model", "day", "endpoint"])
async def test_report_totals_equal_the_sum_of_the_rows(store: Store, unit: str, by: str) -> None:
    rows = generated()
    march = [r for r in rows if r.ts.startswith("2025-03")]
    async with store.ledger() as ledger:
        await ledger.append_many(rows)
        everything = await build_report(ledger, parse_query({"by": by, "unit": unit}))
        in_march = await build_report(
            ledger, parse_query({"month": "2025-03", "by": by, "unit": unit})
        )
    for report, subset in ((everything, rows), (in_march, march)):
        t = report.totals
        assert t.requests == len(subset)
        assert t.failed == sum(r.failure is not None for r in subset)
        assert t.energy == pytest.approx(
            sum(r.energy_j or 0 for r in subset) / J_PER[unit], rel=1e-12
        )
        assert t.energy_dynamic == pytest.approx(
            sum(r.energy_dynamic_j or 0 for r in subset) / J_PER[unit], rel=1e-12
        )
        assert t.co2e_g == pytest.approx(sum(r.co2e_g or 0 for r in subset), rel=1e-12)
        assert t.prompt_tokens == sum(r.prompt_tokens or 0 for r in subset)
        groups: defaultdict[str, float] = defaultdict(float)
        for r in subset:
            groups[key_of(r, by)] += (r.energy_j or 0) / J_PER[unit]
        assert {line.key: pytest.approx(line.energy, rel=1e-12) for line in report.lines} == groups
    assert 0 < in_march.totals.requests < everything.totals.requests


async def test_since_until_and_user_filters(store: Store) -> None:
    rows = generated()
    async with store.ledger() as ledger:
        await ledger.append_many(rows)
        query = {"user": "bob", "since": "2025-02-10", "until": "2025-03-05", "unit": "J"}
        report = await build_report(ledger, parse_query(query))
    chosen = [r for r in rows if r.user == "bob" and "2025-02-10" <= r.ts[:10] <= "2025-03-05"]
    assert report.totals.requests == len(chosen)
    assert report.totals.energy == pytest.approx(sum(r.energy_j or 0 for r in chosen))
    assert [line.key for line in report.lines] == ["bob"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"unit": "MWh"}, "unit"),
        ({"by": "colour"}, "by"),
        ({"month": "2025-3x"}, "month"),
        ({"month": "2025-03", "since": "2025-03-01"}, "month"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "until"),
        ({"month": "9999-12"}, "month"),  # ends in the year 10000
        ({"until": "9999-12-31"}, "until"),  # the whole day: up to 10000-01-01
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),  # before year 1 in UTC
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ],
)
def test_bad_report_parameters_name_the_parameter(params: dict[str, str], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_query(params)
    assert info.value.param == param


async def test_the_first_and_last_days_datetime_holds_are_periods_like_any_other(
    store: Store,
) -> None:
    rows = generated(50)
    async with store.ledger() as ledger:
        await ledger.append_many(rows)
        report = await build_report(
            ledger, parse_query({"since": "0001-01-01", "until": "9999-12-30"})
        )
    assert report.totals.requests == len(rows)
    assert report.to_json()["since"] == "0001-01-01T00:00:00.000000Z"


def test_report_cli_table_csv_and_json(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    db = store.cli_args
    rows = generated()
    fill(store, rows)
    total_wh = sum(r.energy_j or 0 for r in rows) / 3600
    assert main(["report", *db]) == 0
    table = capsys.readouterr().out
    assert "TOTAL" in table and all(u in table for u in USERS) and f"{total_wh:.4f}" in table
    assert main(["report", *db, "--by", "model", "--format", "csv", "--unit", "kWh"]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # Data rows only: a CSV reader summing a column must not count the total twice.
    assert sorted(line["model"] for line in lines) == sorted({key_of(r, "model") for r in rows})
    assert sum(float(line["energy_kWh"]) for line in lines) == pytest.approx(
        total_wh / 1000, rel=1e-12
    )
    csv_args = ["report", *db, "--by", "model", "--format", "csv", "--unit", "kWh"]
    assert main([*csv_args, "--totals"]) == 0
    with_total = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert with_total[:-1] == lines and with_total[-1]["model"] == "TOTAL"
    assert float(with_total[-1]["energy_kWh"]) == pytest.approx(total_wh / 1000, rel=1e-12)
    assert main(["report", *db, "--month", "2025-02", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    feb = [r for r in rows if r.ts.startswith("2025-02")]
    assert data["totals"]["requests"] == len(feb)
    assert data["since"].startswith("2025-02-01") and data["until"].startswith("2025-03-01")


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--unit", "MWh"],
        ["report", "--month", "2025-03", "--until", "2025-04-01"],
        ["report", "--since", "not-a-date"],
        ["report", "--month", "9999-12"],
        ["report", "--until", "9999-12-31"],
        ["export", "--format", "xml"],
        ["export", "--output", "/no/such/folder/out.csv"],
    ],
)
def test_report_and_export_bad_input_is_one_line_and_exit_2(
    argv: list[str], store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    db = store.cli_args
    fill(store, generated(5))
    try:
        code = main([*argv, *db])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err


def test_report_on_a_missing_ledger_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--ledger", str(tmp_path / "none.sqlite3")]) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()


def test_export_writes_every_row_as_csv_or_jsonl(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = store.cli_args
    rows = generated(50)
    rows[0].energy_components_j = {"gpu": 1.0}
    rows[0].prompt = '{"messages": []}'
    fill(store, rows)
    assert main(["export", "--format", "jsonl", *db]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(e["request_id"] for e in exported) == sorted(r.request_id for r in rows)
    first = next(e for e in exported if e["request_id"] == "g0")
    assert first["energy_components_j"] == {"gpu": 1.0} and first["prompt"] == '{"messages": []}'
    out = tmp_path / "rows.csv"
    assert main(["export", "--output", str(out), *db, "--user", "alice"]) == 0
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(table) == sum(r.user == "alice" for r in rows)
    assert {"id", "request_id", "ts", "energy_j", "co2e_g", "trace_id", "prompt"} <= set(table[0])
    assert sum(float(t["energy_j"] or 0) for t in table) == pytest.approx(
        sum(r.energy_j or 0 for r in rows if r.user == "alice"))  # fmt: skip


# -- HTTP and isolation -------------------------------------------------------------


async def keys_for(store: Store) -> dict[str, str]:
    async with store.ledger() as ledger:
        keys = KeyStore(ledger)
        return {
            "alice": (await keys.create("alice"))[0],
            "bob": (await keys.create("bob"))[0],
            "admin": (await keys.create("root", admin=True))[0],
        }


async def get(c: httpx.AsyncClient, url: str, key: str | None, **params: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return await c.get(url, params=params, headers=headers)


async def test_http_report_shows_a_user_their_own_rows_and_an_admin_everyones(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    rows = generated()
    async with store.ledger() as ledger:
        await ledger.append_many(rows)
    keys = await keys_for(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        url = jg.url + "/v1/energy/report"
        mine = (await get(c, url, keys["alice"], by="model", unit="J", month="2025-03")).json()
        everyone = (await get(c, url, keys["admin"], unit="J")).json()
        bobs = (await get(c, url, keys["admin"], user="bob", unit="J")).json()
        bad = await get(c, url, keys["alice"], unit="MWh")
        unknown = await get(c, url, keys["alice"], colour="red")
        anonymous = await get(c, url, None)
    alice_march = [r for r in rows if r.user == "alice" and r.ts.startswith("2025-03")]
    assert mine["object"] == "energy.report" and mine["user"] == "alice"
    assert mine["totals"]["requests"] == len(alice_march)
    assert mine["totals"]["energy_j"] == pytest.approx(sum(r.energy_j or 0 for r in alice_march))
    assert {g["user"] for g in everyone["groups"]} == set(USERS)
    assert everyone["totals"]["requests"] == len(rows)
    assert bobs["totals"]["requests"] == sum(r.user == "bob" for r in rows)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "unit"
    assert unknown.status_code == 400
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "missing_api_key"


async def test_http_requests_are_the_callers_newest_first_in_pages(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    keys = await keys_for(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        for who in ("alice", "bob", "alice", "alice", "bob"):
            await c.post(jg.url + "/v1/chat/completions", json=chat,
                         headers={"authorization": f"Bearer {keys[who]}"})  # fmt: skip
        url = jg.url + "/v1/energy/requests"
        page1 = (await get(c, url, keys["alice"], limit=2)).json()
        page2 = (await get(c, url, keys["alice"], limit=2, before=page1["next_before"])).json()
        everyone = (await get(c, url, keys["admin"])).json()
        too_big = await get(c, url, keys["alice"], limit=10_000)
    assert [r["user"] for r in page1["data"] + page2["data"]] == ["alice"] * 3
    ids = [r["id"] for r in page1["data"] + page2["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
    assert page1["has_more"] and not page2["has_more"] and page2["next_before"] is None
    assert page1["data"][0]["energy_j"] > 0 and page1["data"][0]["key_prefix"] == keys["alice"][:11]
    assert [r["user"] for r in everyone["data"]] == ["bob", "alice", "alice", "bob", "alice"]
    assert too_big.status_code == 400


async def test_user_a_can_never_read_user_bs_rows(
    fake: FakeBackend, joulegate_app: JoulegateApp, store: Store
) -> None:
    rows = generated(200)
    for r in rows:
        if r.user == "bob":
            r.model_requested = "bobs-secret-model"
    async with store.ledger() as ledger:
        await ledger.append_many(rows)
    keys = await keys_for(store)
    settings = {"ledger": store.settings, "auth": AuthSettings(mode="keys")}
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("/v1/energy/report", {}), ("/v1/energy/report", {"by": "user"}),
        ("/v1/energy/report", {"by": "model"}), ("/v1/energy/report", {"user": "bob"}),
        ("/v1/energy/report", {"user": ""}), ("/v1/energy/report", {"user": "BOB"}),
        ("/v1/energy/requests", {}), ("/v1/energy/requests", {"user": "bob"}),
        ("/v1/energy/requests", {"limit": 500}), ("/v1/energy/requests", {"before": 10**9}),
    ]  # fmt: skip
    async with (
        joulegate_app(fake.url, accounting_components(), **settings) as jg,
        httpx.AsyncClient() as c,
    ):
        answers = [await get(c, jg.url + path_, keys["alice"], **p) for path_, p in attempts]
    for (path_, params), answer in zip(attempts, answers, strict=True):
        text = answer.text
        assert "bob" not in text.lower(), (path_, params, text[:200])
        assert answer.status_code in (200, 403), (path_, params)
        if answer.status_code == 403:
            assert answer.json()["error"]["type"] == "permission_error"
