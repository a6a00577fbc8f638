"""The remote meters' HTTP client: a keep-alive GET over the socket, errors as MeterError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from config.errors import MeterError
from meters.http import KeepAlive, get_json, get_text
from tests.support.serving import read_body, serve


class Endpoint:
    """Answers ``GET /n`` with ``n`` bytes; ``?length`` sends a Content-Length (else
    uvicorn chunks it); ``/close`` asks to close; ``/missing`` is 404."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        self.connections.add(scope["client"])
        path = scope["path"].strip("/")
        status = 404 if path == "missing" else 200
        body = b'{"power": 12.5}' if path == "json" else b"x" * int(path if path.isdigit() else 0)
        headers = [(b"content-length", str(len(body)).encode())] if scope["query_string"] else []
        if path == "close":
            body, headers = b"bye", [(b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_bodies_of_every_framing_come_whole_over_one_connection() -> None:
    endpoint = Endpoint()
    async with serve(endpoint, lifespan="off") as url:
        client = KeepAlive()

        def reads() -> list[int]:
            sizes = [len(get_text(client, f"{url}/{n}")) for n in (0, 5, 70_000)]
            sizes += [len(get_text(client, f"{url}/{n}?length")) for n in (3, 70_000)]
            return sizes

        assert await asyncio.to_thread(reads) == [0, 5, 70_000, 3, 70_000]
        assert len(endpoint.connections) == 1  # kept alive throughout
        assert await asyncio.to_thread(get_json, client, url + "/json") == {"power": 12.5}
        with pytest.raises(MeterError, match="answered 404"):
            await asyncio.to_thread(get_text, client, url + "/missing")
        assert await asyncio.to_thread(get_text, client, url + "/close") == "bye"
        assert await asyncio.to_thread(get_text, client, url + "/2") == "xx"  # reconnected
        client.close()


async def test_a_meter_that_is_gone_is_a_meter_error() -> None:
    async with serve(Endpoint(), lifespan="off", kill_on_exit=True) as url:
        client = KeepAlive(timeout_s=0.5)
        assert await asyncio.to_thread(get_text, client, url + "/1") == "x"
    with pytest.raises(MeterError, match=url):
        await asyncio.to_thread(get_text, client, url + "/1")
