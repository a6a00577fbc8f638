"""The disconnect watch cancels the forwarding task when the client leaves, and only
that cancellation is taken back: a server stopping still stops the request."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.wire import DisconnectWatch


class Client:
    """An ASGI ``receive`` that says ``http.disconnect`` once told to."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def forward(client: Client, outcome: list[str]) -> None:
    watch = DisconnectWatch(client.receive)
    try:
        await asyncio.sleep(10)  # the backend, answering slowly
        outcome.append("answered")
    except asyncio.CancelledError:
        if not watch.took_back():
            outcome.append("stopped")
            raise
        outcome.append("client left")
    finally:
        watch.close()
    await asyncio.sleep(0)  # the finishing steps still run, not cancelled
    outcome.append("finished")


async def test_a_client_leaving_cancels_the_forwarding_and_is_taken_back() -> None:
    client, outcome = Client(), []
    task = asyncio.create_task(forward(client, outcome))
    await asyncio.sleep(0.01)
    client.gone.set()
    await task
    assert outcome == ["client left", "finished"]
    assert not task.cancelled() and task.cancelling() == 0


async def test_the_server_stopping_is_not_taken_for_a_client_leaving() -> None:
    for client_leaves_too in (False, True):
        client, outcome = Client(), []
        task = asyncio.create_task(forward(client, outcome))
        await asyncio.sleep(0.01)
        task.cancel()
        if client_leaves_too:
            client.gone.set()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and outcome == ["stopped"]


async def test_a_client_leaving_after_the_forwarding_cancels_nothing() -> None:
    client, outcome = Client(), []

    async def quick() -> None:
        watch = DisconnectWatch(client.receive)
        watch.close()
        client.gone.set()
        await asyncio.sleep(0.01)
        outcome.append("finished")

    await asyncio.create_task(quick())
    assert outcome == ["finished"]
