"""Several backends behind one joulegate: routing by model, the union of models,
404 for a model nobody serves, 502 for a model whose server is down."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting.ledger.routes import route_handlers as ledger_routes
from config import BackendSettings, ConfigError, LedgerSettings, Settings, load_settings
from proxy.app import create_app
from proxy.backends import BackendRouter
from tests.support.fake_backend import FakeBackend
from tests.support.ledger import accounting_components, db_rows
from tests.support.serving import Running, serve
from tests.support.telemetry import until


@contextlib.asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[FakeBackend, str, FakeBackend, str]]:
    small, large = FakeBackend(models=("small",)), FakeBackend(models=("large", "large-2"))
    async with serve(small, lifespan="off") as url_s, serve(large, lifespan="off") as url_l:
        yield small, url_s, large, url_l


@contextlib.asynccontextmanager
async def joulegate(backends: list[BackendSettings], **settings: Any) -> AsyncIterator[Running]:
    app = create_app(Settings(backends=tuple(backends), **settings), components=[])
    async with serve(app) as url:
        yield Running(url, app)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_each_model_goes_to_the_backend_that_serves_it() -> None:
    async with two_backends() as (small, url_s, large, url_l):
        backends = [BackendSettings(url=url_s), BackendSettings(url=url_l, name="big")]
        async with joulegate(backends) as jg, httpx.AsyncClient(base_url=jg.url) as c:
            for model in ("small", "large", "large-2", "small"):
                r = await c.post("/v1/chat/completions", json=chat(model))
                assert r.status_code == 200 and r.json()["model"] == model
            models = (await c.get("/v1/models")).json()
    posted_s = [s.json()["model"] for s in small.seen if s.method == "POST"]
    posted_l = [s.json()["model"] for s in large.seen if s.method == "POST"]
    assert posted_s == ["small", "small"] and posted_l == ["large", "large-2"]
    assert [m["id"] for m in models["data"]] == ["large", "large-2", "small"]
    assert models["data"][0]["owned_by"] == "fake"  # each entry as its backend gave it


async def test_a_model_nobody_serves_is_404_model_not_found_naming_the_models() -> None:
    async with two_backends() as (small, url_s, large, url_l):
        backends = [BackendSettings(url=url_s), BackendSettings(url=url_l)]
        async with joulegate(backends) as jg, httpx.AsyncClient(base_url=jg.url) as c:
            r = await c.post("/v1/chat/completions", json=chat("gpt-9"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert "large" in err["message"] and "small" in err["message"]
    assert not [s for s in small.seen + large.seen if s.method == "POST"]


async def test_a_backend_that_is_down_makes_its_models_502_and_readyz_names_it() -> None:
    small = FakeBackend(models=("small",))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    dead = BackendSettings(url=dead_url, models=("large",), name="big")
    async with (
        serve(small, lifespan="off") as url_s,
        joulegate([BackendSettings(url=url_s), dead]) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        first = await c.post("/v1/chat/completions", json=chat("large"))
        again = await c.post("/v1/chat/completions", json=chat("large"))
        ok = await c.post("/v1/chat/completions", json=chat("small"))
        ready = await c.get("/readyz")
    assert first.status_code == 502 and again.status_code == 502
    assert again.json()["error"]["type"] == "backend_unreachable"
    assert ok.status_code == 200
    assert ready.status_code == 503
    (big,) = [ch for ch in ready.json()["checks"] if ch.get("backend") == "big"]
    assert big["ok"] is False and big["models"] == ["large"]


async def test_two_backends_claiming_one_model_stop_start_up_naming_both() -> None:
    twin = FakeBackend(models=("small",))
    async with two_backends() as (_, url_s, _l, _u), serve(twin, lifespan="off") as url_t:
        settings = Settings(backends=(BackendSettings(url=url_s), BackendSettings(url=url_t)))
        async with httpx.AsyncClient() as client:
            router = BackendRouter(settings.backend_list, client)  # what the lifespan builds
            with pytest.raises(ConfigError, match="small") as info:
                await router.discover()
    assert url_s.split("//")[1] in str(info.value) and url_t.split("//")[1] in str(info.value)


async def test_the_ledger_records_which_backend_served_each_request(tmp_path: Any) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    async with two_backends() as (_, url_s, _l, url_l):
        settings = Settings(
            backends=(BackendSettings(url=url_s, name="cpu-a"), BackendSettings(url=url_l)),
            ledger=LedgerSettings(path=str(ledger)),
        )
        from proxy.observability.metrics import metrics_endpoint, prometheus_component

        app = create_app(
            settings,
            components=[prometheus_component, *accounting_components()],
            route_handlers=[metrics_endpoint, *ledger_routes()],
        )
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
            for model in ("small", "large", "large"):
                assert (await c.post("/v1/chat/completions", json=chat(model))).status_code == 200
            report = (await c.get("/v1/energy/report", params={"by": "backend"})).json()
            metrics = (await c.get("/metrics")).text
    served = {
        line.split('backend="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("joulegate_requests_total{") and 'endpoint="chat/completions"' in line
    }
    assert served == {"cpu-a": 1.0, url_l.split("//")[1]: 2.0}  # metrics carry the backend
    rows = db_rows(ledger)
    large_name = url_l.split("//")[1]
    assert [(r["model_requested"], r["backend"]) for r in rows] == [
        ("small", "cpu-a"),
        ("large", large_name),
        ("large", large_name),
    ]
    groups = {g["backend"]: g["requests"] for g in report["groups"]}
    assert groups == {"cpu-a": 1, large_name: 2}


def test_backends_come_from_one_environment_variable_and_backend_url_still_works() -> None:
    s = load_settings(None, {"JOULEGATE_BACKENDS": "http://127.0.0.1:8080, http://127.0.0.1:8081"})
    assert [b.url for b in s.backend_list] == ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]
    alone = load_settings(None, {"JOULEGATE_BACKEND_URL": "http://10.0.0.1:9"})
    assert [b.url for b in alone.backend_list] == ["http://10.0.0.1:9"]
    with pytest.raises(ConfigError, match="served by both"):
        Settings(
            backends=(
                BackendSettings(url="http://a:1", models=("m",)),
                BackendSettings(url="http://b:1", models=("m",)),
            )
        )


async def test_without_a_valid_key_nothing_is_learnt_about_the_models(tmp_path: Path) -> None:
    from accounting import SqliteLedger
    from accounting.auth import KeyStore
    from config import AuthSettings

    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        key, _ = await KeyStore(ledger).create("alice", admin=False)
    settings = {"ledger": LedgerSettings(path=str(path)), "auth": AuthSettings(mode="keys")}
    async with two_backends() as (_, url_s, _, url_l):
        backends = [BackendSettings(url=url_s), BackendSettings(url=url_l)]
        app = create_app(
            Settings(backends=tuple(backends), **settings),  # type: ignore[arg-type]
            components=accounting_components(),
        )
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
            asked = {
                "list": await c.get("/v1/models"),
                "one": await c.get("/v1/models/small"),
                "unknown model": await c.post("/v1/chat/completions", json=chat("gpt-9")),
                "wrong key": await c.get("/v1/models", headers={"authorization": "Bearer jg-x"}),
            }
            mine = await c.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    for what, r in asked.items():
        assert r.status_code == 401, what
        assert "small" not in r.text and "large" not in r.text, what
    assert mine.status_code == 200
    assert [m["id"] for m in mine.json()["data"]] == ["large", "large-2", "small"]


async def test_a_single_backend_gets_every_model_and_still_lists_its_own() -> None:
    only = FakeBackend(models=("small",))
    async with (
        serve(only, lifespan="off") as url,
        joulegate([BackendSettings(url=url)]) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat("gpt-9"))
        models = await c.get("/v1/models")
        learnt = set(jg.app.state.ctx.router.models)
    assert r.status_code == 200 and r.json()["model"] == "gpt-9"  # still routed to it
    assert learnt == {"small"}  # for the metric labels
    assert only.listings >= 1
    assert [s.path for s in only.seen] == ["/v1/chat/completions", "/v1/models"]
    assert [m["id"] for m in models.json()["data"]] == ["small"]  # the backend's own answer


async def test_a_single_backend_that_is_down_does_not_stop_start_up() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with (
        joulegate([BackendSettings(url=dead_url)]) as jg,
        httpx.AsyncClient(base_url=jg.url) as c,
    ):
        healthy = await c.get("/healthz")
        r = await c.post("/v1/chat/completions", json=chat("small"))
        learnt = set(jg.app.state.ctx.router.models)
    assert healthy.status_code == 200
    assert r.status_code == 502 and r.json()["error"]["type"] == "backend_unreachable"
    assert learnt == set()


async def test_a_single_backend_is_asked_again_every_refresh() -> None:
    only = FakeBackend(models=("small",))
    async with (
        serve(only, lifespan="off") as url,
        joulegate([BackendSettings(url=url)], backend_refresh_s=0.01) as jg,
    ):
        router = jg.app.state.ctx.router
        only.models = ("small", "new")
        await until(lambda: "new" in router.models)
        assert set(router.models) == {"small", "new"}
    assert only.seen == []  # joulegate's own look-ups are not clients' requests
