"""Whatever a client sends to a route joulegate owns, it gets an answer, never a crash:
no 5xx of joulegate's own, and every 4xx in OpenAI's error shape, naming the parameter."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from accounting import SqliteLedger
from accounting.auth import KeyStore
from config import AuthSettings, LedgerSettings
from proxy.observability.metrics import prometheus_component
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components
from tests.support.serving import Running

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
    async with SqliteLedger(path) as ledger:
        store = KeyStore(ledger)
        keys = {
            "alice": (await store.create("alice"))[0],
            "admin": (await store.create("root", admin=True))[0],
        }
    resource, auth, fake_energy, record = accounting_components()
    settings_ = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    comps = [resource, auth, prometheus_component, fake_energy, record]
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


# -- nothing gets past the gate: random input on every joulegate-owned route -------

ROUTES = (
    "/v1/energy/report",
    "/v1/energy/requests",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
)

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
huge_ints = st.one_of(
    st.integers(min_value=-(2**90), max_value=2**90),
    st.integers(2**63 - 2, 2**63 + 1),
    st.integers(-(2**63) - 1, -(2**63) + 1),
).map(str)
years = st.one_of(st.integers(0, 10_000), st.sampled_from([1, 9998, 9999, 10_000]))
months = st.builds("{:04d}-{:02d}".format, years, st.integers(-1, 13))
dates = st.builds("{}-{:02d}".format, months, st.integers(-1, 32))
offsets = st.sampled_from(["", "Z", "+01:00", "-01:00", "+23:59", "-23:59"])
timestamps = st.builds("{}T{:02d}:00:00{}".format, dates, st.integers(0, 25), offsets)
edge = st.sampled_from(
    ["", " ", "-1", "0", "1e9", "NaN", "∞", "١٢", "%", "J", "kwh", "USER", "\x00"]
)
values = st.one_of(edge, huge_ints, months, dates, timestamps, text)
RAW = ["%FF", "%C3%28", "%00", "%E2%82", "%25", "%2", "+", "&&", "="]
raw_escapes = st.sampled_from(RAW)
# The edges of what datetime and SQLite hold, where parsing used to break.
month_edges = st.sampled_from(["9999-12", "9999-11", "0000-01", "0001-01", "10000-01", "9999-13"])
when_edges = st.sampled_from(
    ["9999-12-31", "0001-01-01", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
     "9999-12-31T23:59:59.999999"]
)  # fmt: skip
int_edges = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**70, 500, 501]).map(str)
whens = st.one_of(when_edges, dates, timestamps)
ints = st.one_of(int_edges, huge_ints)
# Mostly a value of the parameter's own kind, so that parsing gets past the first check.
kinds = {
    "month": st.one_of(month_edges, months), "since": whens, "until": whens, "limit": ints,
    "before": ints, "by": text, "unit": text, "user": text,
}  # fmt: skip
ROUTE_PARAMS = {
    "/v1/energy/report": ("user", "since", "until", "month", "by", "unit"),
    "/v1/energy/requests": ("user", "limit", "before"),
}


@st.composite
def query_strings(draw: st.DrawFn, route: str) -> str:
    """A query string of the route's parameters (now and then a random one too), with raw
    escapes sprinkled in."""
    names = ROUTE_PARAMS.get(route, tuple(kinds))
    chosen = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    pairs = [(name, draw(st.one_of(kinds[name], kinds[name], values))) for name in chosen]
    if draw(st.integers(0, 4)) == 0:
        pairs.append((draw(st.one_of(st.sampled_from(tuple(kinds)), text)), draw(values)))
    parts = []
    for key, value in pairs:
        escaped = quote(value, safe="")
        if draw(st.integers(0, 7)) == 0:
            escaped += draw(raw_escapes)
        parts.append(f"{quote(key, safe='')}={escaped}")
    return "&".join(parts)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, kind: str) -> bytes:
    opener, closer = (b'{"a":', b"}") if kind == "object" else (b"[", b"]")
    return opener * depth + b"1" + closer * depth


@st.composite
def chat_bodies(draw: st.DrawFn) -> bytes:
    """Request bodies for the intake parser: objects, other JSON, deep nesting, junk."""
    kind = draw(st.sampled_from(["object", "json", "nested", "junk", "blank"]))
    if kind == "object":
        body: dict[str, Any] = draw(st.dictionaries(text, json_values, max_size=5))
        body.pop("max_tokens", None)  # the fake backend would write that many words
        body.update(draw(st.fixed_dictionaries({}, optional={
            "model": json_values, "messages": json_values, "stream": json_values,
            "stream_options": json_values, "user": json_values,
            "max_tokens": st.integers(0, 3)})))  # fmt: skip
        return json.dumps(body).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "nested":
        # Shallow enough for the fake backend's parser, or far too deep for joulegate's.
        depth = draw(st.one_of(st.integers(1, 200), st.integers(5_000, 50_000)))
        return nested(depth, draw(st.sampled_from(["object", "array"])))
    if kind == "junk":
        return draw(st.binary(max_size=64))
    return draw(st.sampled_from([b"", b" ", b"\n\t\r ", b"\xef\xbb\xbf{}", b"{}" + b"\x00"]))


# The ledger's routes parse the most, so they are drawn most often.
routes = st.sampled_from([*ROUTES[:2] * 4, *ROUTES[2:]])
methods = st.sampled_from(["GET"] * 6 + ["POST", "DELETE"])
gets = st.tuples(methods, routes).flatmap(
    lambda mr: st.tuples(st.just(mr[0]), st.just(mr[1]), query_strings(mr[1]), st.just(b""))
)
posts = st.tuples(st.just("POST"), st.just("/v1/chat/completions"), st.just(""), chat_bodies())
# One request by id: any text as the path segment, raw escapes now and then.
lookup_paths = st.tuples(st.one_of(edge, huge_ints, text), st.sampled_from(["", "", *RAW])).map(
    lambda p: "/v1/energy/requests/" + quote(p[0], safe="") + p[1]
)
lookups = st.tuples(st.just("GET"), lookup_paths, st.just(""), st.just(b""))
calls = st.one_of(gets, gets, posts, lookups)
callers = st.sampled_from(["admin", "admin", "alice", "alice", "nobody", "stranger"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=calls, who=callers)
@example(call=("GET", "/v1/energy/report", "month=9999-12", b""), who="alice")
@example(call=("GET", "/v1/energy/report", "until=9999-12-31", b""), who="admin")
@example(call=("GET", "/v1/energy/requests", f"before={2**70}", b""), who="alice")
@example(call=("POST", "/v1/energy/report", "", b""), who="alice")
@example(call=("GET", "/v1/energy/requests/%FF", "", b""), who="alice")
@example(call=("GET", "/v1/energy/requests/%00", "", b""), who="admin")
async def test_no_input_makes_joulegate_fail_and_every_4xx_is_openais_shape(
    served: Served, call: tuple[str, str, str, bytes], who: str
) -> None:
    method, path, query, body = call
    key = {"nobody": None, "stranger": "jg-not-a-real-key"}.get(who, served.keys.get(who))
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    url = path + (f"?{query}" if query else "")
    r = await served.client.request(method, url, content=body, headers=headers)
    assert r.status_code < 500, (method, url, body[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), r.text
    assert served.jg.gate.in_flight == 0
