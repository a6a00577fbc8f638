"""``/readyz`` in keys mode tells strangers only the status, and asks the backends at
most once per ``readyz_cache_s``; joulegate's own routes take ``max_body_bytes``
(issue 31, defect 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from accounting.forecast.stage import forecast_component
from accounting.ledger.stage import (
    Accounting,
    accounting_resource,
    auth_component,
    record_component,
)
from config import AuthSettings, LedgerSettings
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp


async def test_readyz_shows_details_to_admins_only_and_caches_backend_checks(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    ledger = LedgerSettings(path=str(tmp_path / "l.sqlite3"))
    settings = {"ledger": ledger, "auth": AuthSettings(mode="keys"), "readyz_cache_s": 3600}
    async with joulegate_app(
        fake.url, [accounting_resource, auth_component, record_component], **settings
    ) as jg:
        keys = jg.app.state.ctx.get(Accounting).keys
        admin, user = (await keys.create("root", admin=True))[0], (await keys.create("u"))[0]
        listings = fake.listings
        async with httpx.AsyncClient(base_url=jg.url) as c:
            calls = [c.get("/readyz") for _ in range(50)]
            anonymous = await asyncio.gather(*calls)
            as_user = await c.get("/readyz", headers={"authorization": f"Bearer {user}"})
            as_admin = await c.get("/readyz", headers={"authorization": f"Bearer {admin}"})
    for r in [*anonymous, as_user]:
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert fake.url.removeprefix("http://") not in r.text
    details = as_admin.json()
    assert details["status"] == "ready"
    assert any(fake.url in str(check) for check in details["checks"])
    assert fake.listings - listings <= 1  # 52 calls, at most one look at the backend


async def test_the_forecast_route_takes_max_body_bytes_with_an_openai_413(
    fake: FakeBackend, joulegate_app: JoulegateApp, tmp_path: Path
) -> None:
    ledger = LedgerSettings(path=str(tmp_path / "l.sqlite3"))
    components = [accounting_resource, auth_component, forecast_component(), record_component]
    async with (
        joulegate_app(fake.url, components, ledger=ledger, max_body_bytes=4096) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        big = {"model": "fake-model", "messages": [{"role": "user", "content": "w" * 8000}]}
        r = await c.post("/v1/energy/forecast", json=big)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and "max_body_bytes" in error["message"]
    assert error["type"] == "invalid_request_error"
