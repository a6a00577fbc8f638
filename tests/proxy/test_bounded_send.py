"""Every send to the client is bounded by write_timeout_s, with one timer per answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.bounded import BoundedSend, ClientStalled


class Client:
    """A client socket: each send waits ``delay_s`` (None: forever, a full buffer)."""

    def __init__(self) -> None:
        self.delay_s: float | None = 0.0
        self.got: list[Any] = []

    async def __call__(self, message: Any) -> None:
        if self.delay_s is None:
            await asyncio.Event().wait()
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.got.append(message)


async def test_a_client_that_reads_nothing_stalls_each_send_past_the_bound() -> None:
    client = Client()
    send = BoundedSend(client, 0.05)
    for i in range(50):  # many quick sends: none of them trips the one timer
        await send({"n": i})
    client.delay_s = None
    with pytest.raises(ClientStalled):
        await asyncio.wait_for(send({"n": "stuck"}), timeout=5)
    assert [m["n"] for m in client.got] == list(range(50))
    send.close()


async def test_sends_slower_than_the_bound_in_total_but_not_each_pass() -> None:
    client = Client()
    client.delay_s = 0.02
    send = BoundedSend(client, 0.05)
    for i in range(8):  # 0.16 s in all: the timer re-arms for the call in progress
        await send({"n": i})
    assert len(client.got) == 8
    send.close()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    client = Client()
    client.delay_s = None
    send = BoundedSend(client, 10.0)
    task = asyncio.ensure_future(send({"n": 1}))
    await asyncio.sleep(0.01)
    task.cancel()  # the client left: not a stall
    with pytest.raises(asyncio.CancelledError):
        await task
    send.close()
