"""The FIFO gate: order, bounds, cancellation and thermal pauses."""

from __future__ import annotations

import asyncio

import pytest

from config import QueueFull
from proxy.gate import Gate, Window


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_admitted_strictly_in_arrival_order() -> None:
    gate = Gate(max_concurrency=1, max_queue=100)
    first = Window(0.0)
    await gate.acquire(first)
    order: list[int] = []

    async def client(i: int) -> None:
        await gate.acquire(Window(0.0))
        order.append(i)
        await asyncio.sleep(0)
        gate.release()

    tasks = []
    for i in range(50):
        tasks.append(asyncio.create_task(client(i)))
        await _settle()
    assert gate.waiting == 50
    gate.release()
    await asyncio.gather(*tasks)
    assert order == list(range(50))
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_never_more_than_max_concurrency_admitted() -> None:
    gate = Gate(max_concurrency=3, max_queue=100)
    now = peak = 0

    async def client() -> None:
        nonlocal now, peak
        await gate.acquire(Window(0.0))
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.001)
        now -= 1
        gate.release()

    await asyncio.gather(*(client() for _ in range(30)))
    assert peak == 3
    assert gate.in_flight == 0


async def test_full_queue_refuses_with_retry_after() -> None:
    gate = Gate(max_concurrency=1, max_queue=2)
    await gate.acquire(Window(0.0))
    waiting = [asyncio.create_task(gate.acquire(Window(0.0))) for _ in range(2)]
    await _settle()
    with pytest.raises(QueueFull) as info:
        await gate.acquire(Window(0.0))
    assert info.value.status == 503
    assert int(info.value.headers["retry-after"]) >= 1
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_cancelled_waiter_leaves_the_queue_and_order_is_kept() -> None:
    gate = Gate(max_concurrency=1, max_queue=10)
    await gate.acquire(Window(0.0))
    admitted: list[str] = []

    async def client(name: str) -> None:
        await gate.acquire(Window(0.0))
        admitted.append(name)
        gate.release()

    a, b, c = (asyncio.create_task(client(n)) for n in "abc")
    await _settle()
    b.cancel()
    await _settle()
    assert gate.waiting == 2
    gate.release()
    await asyncio.gather(a, c)
    assert admitted == ["a", "c"]
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_slot_handed_over_at_the_moment_of_cancellation_is_not_leaked() -> None:
    gate = Gate(max_concurrency=1, max_queue=10)
    await gate.acquire(Window(0.0))
    waiter = asyncio.create_task(gate.acquire(Window(0.0)))
    await _settle()
    gate.release()  # hands the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_waiter_cancelled_just_before_a_release_leaves_cleanly() -> None:
    """Cancelled first, then a release drops its (cancelled) place before it runs: it
    still ends cancelled, and the slot goes to the next waiter."""
    gate = Gate(max_concurrency=1, max_queue=10)
    await gate.acquire(Window(0.0))
    waiter = asyncio.create_task(gate.acquire(Window(0.0)))
    after = asyncio.create_task(gate.acquire(Window(0.0)))
    await _settle()
    waiter.cancel()  # its place is cancelled at once ...
    gate.release()  # ... and dropped here, before the waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await after
    assert (gate.in_flight, gate.waiting) == (1, 0)


async def test_thermal_pause_holds_admissions_and_is_reported() -> None:
    t = [100.0]
    gate = Gate(max_concurrency=1, max_queue=10, clock=lambda: t[0])
    gate.pause()
    w = Window(arrived_s=100.0)
    task = asyncio.create_task(gate.acquire(w))
    await _settle()
    assert not task.done() and gate.in_flight == 0
    t[0] = 102.5
    gate.resume()
    await task
    assert gate.in_flight == 1
    assert w.thermal_wait_s == pytest.approx(2.5)
    assert w.queue_s == pytest.approx(2.5)
