"""Forwarding: transparency, errors, streaming and the energy field."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from proxy.llamacpp import free_port
from tests.support.fake_backend import FakeBackend
from tests.support.serving import JoulegateApp, serve, sse_events
from tests.support.stages import Capture, component

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_non_streaming_answer_comes_back_with_timing_and_energy(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(
            jg.url + "/v1/chat/completions?trace=1",
            json=CHAT,
            headers={
                "x-custom": "kept",
                "keep-alive": "timeout=5",
                "proxy-authorization": "Basic eDp5",
                "te": "trailers",
            },
        )
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "Hello there, friend"
    assert body["usage"]["completion_tokens"] == 4
    assert set(body["energy"]) >= {"queue_ms", "duration_ms", "thermal_wait_ms"}
    assert float(r.headers["x-queue-ms"]) >= 0
    assert float(r.headers["x-duration-ms"]) == pytest.approx(
        body["energy"]["duration_ms"], abs=0.1
    )
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/chat/completions", "trace=1")
    assert seen.json() == CHAT
    assert seen.headers["x-custom"] == "kept"
    assert seen.headers["host"] == fake.url.removeprefix("http://")
    assert not {"keep-alive", "proxy-authorization", "te"} & set(seen.headers)


async def test_backend_errors_come_back_unchanged(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(
            jg.url + "/v1/chat/completions", json=CHAT, headers={"x-fake-status": "400"}
        )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "fake backend error",
            "type": "invalid_request_error",
            "code": "fake",
            "param": None,
        }
    }
    assert "x-queue-ms" in r.headers


async def test_malformed_json_is_refused_without_touching_the_backend(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(
            jg.url + "/v1/chat/completions",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
        r2 = await c.post(jg.url + "/v1/embeddings", content=b"[1, 2]")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["code"] == "invalid_json"
    assert r2.status_code == 400
    assert fake.seen == []


async def test_oversized_body_gets_413(fake: FakeBackend, joulegate_app: JoulegateApp) -> None:
    async with joulegate_app(fake.url, max_body_bytes=2048) as jg, httpx.AsyncClient() as c:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await c.post(jg.url + "/v1/chat/completions", json=big)

        async def chunked() -> Any:
            for _ in range(5):
                yield b"x" * 1000

        r2 = await c.post(jg.url + "/v1/chat/completions", content=chunked())
    assert r.status_code == 413 and r2.status_code == 413
    assert "max_body_bytes" in r.json()["error"]["message"]
    assert fake.seen == []


async def test_unreachable_backend_is_502_naming_the_url(joulegate_app: JoulegateApp) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with joulegate_app(dead) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
        assert jg.gate.in_flight == 0
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "backend_unreachable" and dead in err["message"]


async def test_backend_timeout_is_504_and_frees_the_slot(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url, read_timeout_s=0.2) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers={"x-fake-hang": "1"})
        assert (jg.gate.in_flight, jg.gate.waiting) == (0, 0)
        ok = await c.post(jg.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "backend_timeout"
    assert fake.url in r.json()["error"]["message"]
    assert ok.status_code == 200


async def test_client_key_is_replaced_by_the_configured_backend_key(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with (
        joulegate_app(fake.url, backend_api_key="backend-secret") as jg,
        httpx.AsyncClient() as c,
    ):
        await c.post(
            jg.url + "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer client-secret"},
        )
        await c.get(jg.url + "/v1/models", headers={"authorization": "Bearer client-secret"})
    assert [s.headers["authorization"] for s in fake.seen] == ["Bearer backend-secret"] * 2


async def test_client_key_passes_through_when_joulegate_does_not_authenticate(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        await c.get(jg.url + "/v1/models", headers={"authorization": "Bearer client-secret"})
    assert fake.seen[0].headers["authorization"] == "Bearer client-secret"


async def test_stream_carries_energy_in_the_finish_chunk_and_strips_injected_usage(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "x-queue-ms" in r.headers
    evs = sse_events(r.content)
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    assert all(c["choices"] for c in chunks), "no chunk with empty choices: the client did not ask"
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        == "Hello there, friend"
    )
    assert [("energy" in c) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["energy"]["duration_ms"] > 0
    assert fake.seen[0].json()["stream_options"] == {"include_usage": True}


async def test_stream_with_usage_asked_gets_energy_in_the_usage_chunk(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/v1/chat/completions", json=req)
    chunks = sse_events(r.content)[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert "energy" in chunks[-1]
    assert sum("energy" in c for c in chunks) == 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_stream_usage_injection_can_be_turned_off(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url, stream_usage=False) as jg, httpx.AsyncClient() as c:
        await c.post(jg.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    assert "stream_options" not in fake.seen[0].json()


async def test_first_event_reaches_the_client_while_the_backend_still_generates(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    req = {**CHAT, "stream": True, "max_tokens": 5}
    async with (
        joulegate_app(fake.url) as jg,
        httpx.AsyncClient() as c,
        c.stream(
            "POST",
            jg.url + "/v1/chat/completions",
            json=req,
            headers={"x-fake-chunk-delay-ms": "200"},
        ) as r,
    ):
        it = r.aiter_raw()
        first = await anext(it)
        # The backend has 5 delayed chunks to go: it is still generating.
        assert fake.seen[0].finished_s is None
        rest = b"".join([c async for c in it])
    assert b'"role": "assistant"' in first
    assert sse_events(first + rest)[-1] == "[DONE]"


async def test_backend_dropping_a_stream_ends_it_with_an_error_event(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(
            jg.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-fake-drop": "2"},
        )
        assert (jg.gate.in_flight, jg.gate.waiting) == (0, 0)
    evs = sse_events(r.content)
    assert evs[-1]["error"]["type"] == "backend_unreachable"
    assert "[DONE]" not in evs


async def test_health_and_readiness(fake: FakeBackend, joulegate_app: JoulegateApp) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        h = await c.get(jg.url + "/healthz")
        ready = await c.get(jg.url + "/readyz")
    async with joulegate_app(f"http://127.0.0.1:{free_port()}") as jg, httpx.AsyncClient() as c:
        not_ready = await c.get(jg.url + "/readyz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["checks"][0]["ok"] is True
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "not_ready"


async def test_unknown_route_outside_v1_is_an_openai_style_404(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.get(jg.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_ollama_native_paths_forwarded_only_when_enabled(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url, ollama_native=True) as jg, httpx.AsyncClient() as c:
        on = await c.get(jg.url + "/api/tags")
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        off = await c.get(jg.url + "/api/tags")
    assert on.status_code == 404 and on.json()["error"]["message"] == "no route /api/tags"
    assert off.status_code == 404 and off.json()["error"]["type"] == "not_found_error"
    assert [s.path for s in fake.seen] == ["/api/tags"]


async def test_ollama_native_stream_is_relayed_line_by_line_with_energy_last(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    cap = Capture()
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
           "options": {"num_predict": 5}}  # fmt: skip
    async with (
        joulegate_app(fake.url, [component(cap)], ollama_native=True) as jg,
        httpx.AsyncClient() as c,
        c.stream(
            "POST", jg.url + "/api/chat", json=req, headers={"x-fake-chunk-delay-ms": "100"}
        ) as r,  # fmt: skip
    ):
        it = r.aiter_raw()
        first = await anext(it)
        assert fake.seen[0].finished_s is None  # still generating: nothing was buffered
        rest = b"".join([chunk async for chunk in it])
    lines = [json.loads(x) for x in (first + rest).splitlines()]
    assert r.headers["content-type"] == "application/x-ndjson"
    assert "".join(x["message"]["content"] for x in lines) == "Hello there, friend."
    assert [("energy" in x) for x in lines] == [False] * 5 + [True]
    assert lines[-1]["done"] is True and lines[-1]["energy"]["duration_ms"] > 0
    (ex,) = cap.seen
    assert (ex.prompt_tokens, ex.completion_tokens, ex.endpoint) == (7, 5, "chat")
    # No "stream" field: Ollama streams by default, and says why it stopped.
    assert ex.stream is True and ex.finish_reasons == ["length"]


async def test_ollama_native_answer_without_stream_gets_energy(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    req = {"model": "m", "messages": [], "stream": False, "options": {"num_predict": 2}}
    async with joulegate_app(fake.url, ollama_native=True) as jg, httpx.AsyncClient() as c:
        r = await c.post(jg.url + "/api/chat", json=req)
    body = r.json()
    assert body["message"]["content"] == "Hello there" and "energy" in body
    assert "x-duration-ms" in r.headers


async def test_openai_sdk_parses_every_response_unchanged(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg:
        client = openai.AsyncOpenAI(base_url=jg.url + "/v1", api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        done = raw.parse()
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
        chunks = [c async for c in stream]
        emb = await client.embeddings.create(model="m", input="hi")
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m", messages=[], extra_headers={"x-fake-status": "400"}
            )
        await client.close()
    assert done.choices[0].message.content == "Hello there,"
    assert float(raw.headers["x-duration-ms"]) >= 0
    assert done.model_extra is not None and "duration_ms" in done.model_extra["energy"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there,"
    assert chunks[-1].model_extra is not None and "energy" in chunks[-1].model_extra
    assert emb.data[0].embedding == [0.1, 0.2, 0.3]
    assert info.value.status_code == 400
    assert isinstance(fake, FakeBackend)


async def test_stream_tokens_are_counted_when_the_backend_sends_no_usage(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    cap = Capture()
    async with joulegate_app(fake.url, [component(cap)]) as jg, httpx.AsyncClient() as c:
        await c.post(
            jg.url + "/v1/chat/completions",
            json={**CHAT, "stream": True, "max_tokens": 6},
            headers={"x-fake-no-usage": "1"},
        )
        await c.post(
            jg.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 6}
        )
    counted, reported = cap.seen
    assert (counted.completion_tokens, counted.completion_tokens_counted) == (6, True)
    assert counted.prompt_tokens is None
    assert (reported.completion_tokens, reported.completion_tokens_counted) == (6, False)
    assert reported.prompt_tokens == 7


async def test_headers_and_energy_joulegate_owns_are_its_own_not_the_backends(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    from accounting.carbon.stage import carbon
    from meters import meters_component
    from tests.support.fake_backend import IMPOSTOR_HEADERS

    owned = {k.decode().lower() for k, _ in IMPOSTOR_HEADERS}
    impostor = {"x-fake-impostor": "1"}
    async with (
        joulegate_app(fake.url, [meters_component, carbon()]) as jg,
        httpx.AsyncClient() as c,
    ):
        whole = await c.post(jg.url + "/v1/chat/completions", json=CHAT, headers=impostor)
        stream = await c.post(
            jg.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=impostor
        )
    assert whole.status_code == 200
    for name in owned:
        # Never the backend's value next to joulegate's: one value or none.
        assert len(whole.headers.get_list(name)) <= 1, name
        assert whole.headers.get(name) not in ("impostor", "1e9"), name
    for name in ("x-energy-j", "x-co2e-g", "x-queue-ms", "x-duration-ms"):
        assert float(whole.headers[name]) == pytest.approx(  # the header's rounding
            whole.json()["energy"][name.removeprefix("x-").replace("-", "_")], rel=1e-3, abs=0.06
        )
    assert "x-joulegate-anything" not in whole.headers
    assert "impostor" not in whole.json()["energy"]  # replaced, not merged into
    events = [e for e in sse_events(stream.content) if isinstance(e, dict)]
    assert "impostor" not in events[-1]["energy"]
    assert "x-joulegate-anything" not in stream.headers
    assert len(stream.headers.get_list("x-queue-ms")) <= 1


async def test_responses_api_answers_and_streams_are_accounted(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    cap = Capture()
    async with joulegate_app(fake.url, [component(cap)]) as jg:
        client = openai.AsyncOpenAI(base_url=jg.url + "/v1", api_key="k", max_retries=0)
        whole = await client.responses.create(model="m", input="hi", max_output_tokens=3)
        stream = await client.responses.create(model="m", input="hi", stream=True)
        events = [e async for e in stream]
        await client.close()
    assert whole.output_text == "Hello there," and whole.model_extra is not None
    assert whole.model_extra["energy"]["duration_ms"] > 0
    final = events[-1]
    assert final.type == "response.completed"
    # The SDK hands the response object over typed: energy rides in it.
    assert final.response.model_extra is not None
    assert final.response.model_extra["energy"]["duration_ms"] > 0
    assert sum(1 for e in events if e.type == "response.output_text.delta") == 5
    assert not any("energy" in (e.model_extra or {}) for e in events[:-1])
    first, second = cap.seen
    assert (first.prompt_tokens, first.completion_tokens) == (7, 3)
    assert first.finish_reasons == ["incomplete"] and first.response_id == "resp_fake"
    assert (second.prompt_tokens, second.completion_tokens) == (7, 5)
    assert second.finish_reasons == ["completed"] and second.stream is True
    assert second.response_id == "resp_fake"  # from the stream's response.* events


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PUT", "PATCH", "PROPFIND"])
async def test_methods_apis_do_not_use_are_405_and_never_forwarded(
    fake: FakeBackend, joulegate_app: JoulegateApp, method: str
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.request(method, jg.url + "/v1/chat/completions", json=CHAT)
        options = await c.options(jg.url + "/v1/models")
        head = await c.head(jg.url + "/v1/models")
    assert r.status_code == 405
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and method in err["message"]
    assert "GET" in r.headers["allow"] and method not in r.headers["allow"]
    assert options.status_code == 204 and "POST" in options.headers["allow"]
    assert head.status_code == 200 and head.content == b""
    assert fake.seen == []


@pytest.mark.parametrize("opts", ["yes", 1, ["include_usage"], True])
async def test_stream_options_that_are_not_an_object_are_400(
    fake: FakeBackend, joulegate_app: JoulegateApp, opts: str
) -> None:
    async with joulegate_app(fake.url) as jg, httpx.AsyncClient() as c:
        r = await c.post(
            jg.url + "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": opts},
        )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream_options"
    assert fake.seen == []


async def test_a_backend_that_compresses_anyway_loses_no_accounting(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    cap = Capture()
    gz = {"x-fake-gzip": "1"}
    async with joulegate_app(fake.url, [component(cap)]) as jg:
        client = openai.AsyncOpenAI(
            base_url=jg.url + "/v1", api_key="k", max_retries=0, default_headers=gz
        )
        whole = await client.chat.completions.create(model="m", messages=[], max_tokens=3)
        stream = await client.chat.completions.create(
            model="m", messages=[], max_tokens=4, stream=True
        )
        chunks = [c async for c in stream]
        await client.close()
    assert whole.choices[0].message.content == "Hello there,"
    assert whole.model_extra is not None and "energy" in whole.model_extra
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello there, friend"
    )
    assert "energy" in (chunks[-1].model_extra or {})
    first, second = cap.seen
    assert (first.model_served, first.prompt_tokens, first.completion_tokens) == ("m", 7, 3)
    assert (second.completion_tokens, second.finish_reasons) == (4, ["length"])


async def _http10(url: str, body: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = await asyncio.wait_for(reader.read(), 10)  # HTTP/1.0: until the server closes
    writer.close()
    return answer


async def test_http_1_0_clients_get_streams_close_delimited_not_chunked(
    fake: FakeBackend, joulegate_app: JoulegateApp
) -> None:
    async with joulegate_app(fake.url) as jg:
        stream = await _http10(jg.url, json.dumps({**CHAT, "stream": True}).encode())
        whole = await _http10(jg.url, json.dumps(CHAT).encode())
    head, _, body = stream.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    events = sse_events(body)  # the raw events, no chunk-size lines between them
    assert events[-1] == "[DONE]" and "energy" in events[-2]
    head, _, body = whole.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                 .split(b":")[1])  # fmt: skip
    assert length == len(body) and "energy" in json.loads(body)


class _Speech:
    """A backend whose ``/v1/audio/speech`` answer is audio of unknown length, sent in
    pieces; the second piece only once the test lets it go."""

    def __init__(self) -> None:
        self.more = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"audio/mpeg"), (b"x-voice", b"alloy")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ID3\x00\x01", "more_body": True})
        await self.more.wait()
        await send({"type": "http.response.body", "body": b"\xff\xfb\x90", "more_body": False})


async def test_an_answer_of_unknown_length_streams_through_byte_for_byte(
    joulegate_app: JoulegateApp,
) -> None:
    speech = _Speech()
    async with (
        serve(speech, lifespan="off") as url,
        joulegate_app(url) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=10) as c,
        c.stream("POST", "/v1/audio/speech", json={"model": "tts", "input": "hi"}) as r,
    ):
        pieces = r.aiter_raw()
        first = await anext(pieces)  # before the backend has sent the rest
        speech.more.set()
        rest = b"".join([piece async for piece in pieces])
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/mpeg" and r.headers["x-voice"] == "alloy"
    assert "x-request-id" in r.headers
    assert first == b"ID3\x00\x01" and rest == b"\xff\xfb\x90"


@contextlib.asynccontextmanager
async def _closing_keep_alive() -> AsyncIterator[tuple[str, list[int]]]:
    """A backend that answers the first request on each connection (keep-alive) and
    closes the connection, unanswered, when a second request comes on it (as a server
    does that drops idle keep-alive connections just as the client reuses one). Yields
    its URL and how many requests each connection got."""
    per_connection: list[int] = []
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        k = len(per_connection) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                await reader.readexactly(length)
                per_connection[k] += 1
                if per_connection[k] > 1:
                    return  # closed, the request unanswered
                status = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                writer.write(status + b"content-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", per_connection


async def test_a_kept_alive_connection_the_backend_closed_is_retried_on_a_fresh_one(
    joulegate_app: JoulegateApp,
) -> None:
    async with (
        _closing_keep_alive() as (url, per_connection),
        joulegate_app(url) as jg,
        httpx.AsyncClient(base_url=jg.url, timeout=10) as c,
    ):
        answers = [await c.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    # Requests 2 and 3 each met a reused connection that the backend closed under them
    # and went again on a fresh one: no connection carried more than those two requests.
    assert sorted(n for n in per_connection if n)[-2:] == [2, 2]
    assert max(per_connection) == 2
