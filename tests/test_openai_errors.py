"""Whatever a client sends to a route joulegate owns, it gets an answer, never a crash:
a 4xx in OpenAI's error shape that names the parameter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting.auth import KeyStore
from accounting.ledger import Ledger
from config import AuthSettings, LedgerSettings
from proxy.metrics import prometheus_component
from tests.fake_backend import FakeBackend
from tests.ledger_support import accounting_components
from tests.support import Running

Start = Callable[..., contextlib.AbstractAsyncContextManager[Running]]


@dataclass
class Served:
    """joulegate with a ledger, keys mode and /metrics, and a client for it."""

    jg: Running
    client: httpx.AsyncClient
    keys: dict[str, str]

    async def get(self, path: str, key: str = "admin", **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[key]}"}
        return await self.client.get(path, params=params, headers=headers)


@pytest.fixture
async def served(fake: FakeBackend, joulegate_app: Start, tmp_path: Path) -> AsyncIterator[Served]:
    path = tmp_path / "l.sqlite3"
    async with Ledger(path) as ledger:
        store = KeyStore(ledger)
        keys = {
            "alice": (await store.create("alice"))[0],
            "admin": (await store.create("root", admin=True))[0],
        }
    auth, fake_energy, record = accounting_components()
    settings_ = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    comps = [auth, prometheus_component, fake_energy, record]
    async with (
        joulegate_app(fake.url, comps, **settings_) as jg,
        httpx.AsyncClient(base_url=jg.url) as client,
    ):
        yield Served(jg, client, keys)


def assert_openai_error(r: httpx.Response, status: int, error_type: str, param: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == error_type and error["param"] == param, error
    assert isinstance(error["message"], str) and param in error["message"]


# -- the reproduced defects -------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"month": "9999-12"}, "month"),
        ({"until": "9999-12-31"}, "until"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ],
)
async def test_a_report_period_out_of_range_is_a_400_naming_it(
    served: Served, params: dict[str, str], param: str
) -> None:
    r = await served.get("/v1/energy/report", **params)
    assert_openai_error(r, 400, "invalid_request_error", param)


@pytest.mark.parametrize("before", [2**70, 2**63, -(2**63) - 1])
async def test_a_before_id_too_big_for_the_ledger_is_a_400_naming_before(
    served: Served, before: int
) -> None:
    r = await served.get("/v1/energy/requests", before=before)
    assert_openai_error(r, 400, "invalid_request_error", "before")


async def test_a_bad_before_or_limit_names_that_parameter(served: Served) -> None:
    bad_before = await served.get("/v1/energy/requests", before="soon")
    bad_limit = await served.get("/v1/energy/requests", limit="many")
    largest = await served.get("/v1/energy/requests", before=2**63 - 1)
    assert_openai_error(bad_before, 400, "invalid_request_error", "before")
    assert_openai_error(bad_limit, 400, "invalid_request_error", "limit")
    assert largest.status_code == 200 and largest.json()["data"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/energy/report"), ("DELETE", "/v1/energy/requests"), ("POST", "/healthz")],
)
async def test_a_wrong_method_is_a_405_invalid_request_error(
    served: Served, method: str, path: str
) -> None:
    r = await served.client.request(method, path)
    assert r.status_code == 405
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
