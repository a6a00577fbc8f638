"""Admission over several machines' gates, and pauses with reasons."""

from __future__ import annotations

import asyncio

import pytest

from config import QueueFull
from proxy.gate import COOLDOWN, THERMAL, Gate, PauseReason, Window, acquire_first


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_free_gate_admits_at_once_in_the_order_given() -> None:
    busy, free_a, free_b = Gate(1, 10), Gate(1, 10), Gate(1, 10)
    await busy.acquire(Window(0.0))
    assert await acquire_first([busy, free_a, free_b], Window(0.0)) is free_a
    assert await acquire_first([busy, free_a, free_b], Window(0.0)) is free_b


async def test_a_waiter_in_several_queues_is_taken_by_the_first_to_free_a_slot() -> None:
    a, b = Gate(1, 10), Gate(1, 10)
    await a.acquire(Window(0.0))
    await b.acquire(Window(0.0))
    w = Window(0.0)
    waiter = asyncio.create_task(acquire_first([a, b], w))
    await _settle()
    assert (a.waiting, b.waiting) == (1, 1)
    b.release()
    assert await waiter is b
    assert w.admitted_s is not None
    assert (a.waiting, b.waiting, a.in_flight, b.in_flight) == (0, 0, 1, 1)
    a.release()  # nobody is left in a's queue to take the slot
    assert a.in_flight == 0


async def test_a_cancelled_multi_waiter_leaves_every_queue_and_leaks_no_slot() -> None:
    a, b = Gate(1, 10), Gate(1, 10)
    await a.acquire(Window(0.0))
    await b.acquire(Window(0.0))
    waiter = asyncio.create_task(acquire_first([a, b], Window(0.0)))
    await _settle()
    a.release()  # hands a's slot over ...
    waiter.cancel()  # ... to a waiter cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (a.in_flight, a.waiting, b.in_flight, b.waiting) == (0, 0, 1, 0)


async def test_full_everywhere_is_queue_full() -> None:
    a, b = Gate(1, 0), Gate(1, 0)
    await a.acquire(Window(0.0))
    await b.acquire(Window(0.0))
    with pytest.raises(QueueFull):
        await acquire_first([a, b], Window(0.0))


async def test_a_cool_down_and_a_thermal_pause_do_not_end_each_other() -> None:
    gate = Gate(1, 10, cooldown_s=3600.0, cooldown_every=1)
    thermal = PauseReason(gate, THERMAL)
    await gate.acquire(Window(0.0))  # the first request: a cool-down follows it
    assert gate.paused_for(COOLDOWN)
    assert not thermal.paused  # the guard does not mistake it for its own pause
    thermal.pause()
    gate.release()
    assert gate.cooldowns == 1
    thermal.resume()
    assert gate.paused  # still cooling down
    waiter = asyncio.create_task(gate.acquire(Window(0.0)))
    await _settle()
    assert not waiter.done()
    gate.resume(COOLDOWN)
    await asyncio.wait_for(waiter, 1)
