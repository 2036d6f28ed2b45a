"""engine/kv_budget.py: reservations fit, wait or fail with a 503-class error; release frees room."""

from __future__ import annotations

import asyncio

import pytest

from swarmd.engine.kv_budget import KVBudget
from swarmd.errors import CapacityError, KVBudgetExceeded


async def test_reserve_within_capacity_counts_bytes_and_sessions() -> None:
    kv = KVBudget(100)
    a = await kv.reserve(30)
    b = await kv.reserve(70)
    assert (kv.used, kv.sessions) == (100, 2)
    assert (a.nbytes, b.nbytes) == (30, 70)
    await kv.release(a)
    assert (kv.used, kv.sessions) == (70, 1)
    await kv.release(b)
    assert (kv.used, kv.sessions) == (0, 0)


async def test_larger_than_capacity_fails_at_once_even_with_a_timeout() -> None:
    kv = KVBudget(100)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(KVBudgetExceeded, match="more than the whole budget") as info:
        await kv.reserve(101, timeout=5.0)
    assert loop.time() - start < 1.0
    assert isinstance(info.value, CapacityError)
    assert isinstance(info.value, MemoryError)
    assert info.value.status == 503
    assert (kv.used, kv.sessions) == (0, 0)


async def test_full_budget_with_zero_timeout_fails() -> None:
    kv = KVBudget(100)
    await kv.reserve(80)
    with pytest.raises(KVBudgetExceeded, match="full") as info:
        await kv.reserve(30, timeout=0)
    assert info.value.status == 503
    assert (kv.used, kv.sessions) == (80, 1)
    assert (await kv.reserve(20)).nbytes == 20  # what still fits is granted


async def test_waiter_times_out_when_nothing_is_released() -> None:
    kv = KVBudget(10)
    await kv.reserve(10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(KVBudgetExceeded):
        await kv.reserve(1, timeout=0.05)
    assert 0.04 <= loop.time() - start < 1.0
    assert (kv.used, kv.sessions) == (10, 1)


async def test_waiter_succeeds_once_another_reservation_is_released() -> None:
    kv = KVBudget(100)
    first = await kv.reserve(60)
    waiter = asyncio.create_task(kv.reserve(60, timeout=5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert kv.sessions == 1
    await kv.release(first)
    second = await asyncio.wait_for(waiter, 1.0)
    assert second.nbytes == 60
    assert (kv.used, kv.sessions) == (60, 1)


async def test_release_wakes_only_waiters_that_fit() -> None:
    kv = KVBudget(100)
    a = await kv.reserve(50)
    b = await kv.reserve(50)
    big = asyncio.create_task(kv.reserve(100, timeout=5.0))
    small = asyncio.create_task(kv.reserve(40, timeout=5.0))
    await asyncio.sleep(0.01)
    await kv.release(a)
    await asyncio.wait_for(small, 1.0)
    await asyncio.sleep(0.01)
    assert not big.done()
    assert (kv.used, kv.sessions) == (90, 2)
    await kv.release(b)
    await kv.release(small.result())
    assert (await asyncio.wait_for(big, 1.0)).nbytes == 100
    assert (kv.used, kv.sessions) == (100, 1)


async def test_double_release_is_harmless() -> None:
    kv = KVBudget(100)
    a = await kv.reserve(40)
    b = await kv.reserve(10)
    await kv.release(a)
    await kv.release(a)
    assert a.released
    assert (kv.used, kv.sessions) == (10, 1)
    await kv.release(b)
    assert (kv.used, kv.sessions) == (0, 0)


async def test_cancelled_waiter_takes_nothing() -> None:
    kv = KVBudget(10)
    held = await kv.reserve(10)
    waiter = asyncio.create_task(kv.reserve(5, timeout=5.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await kv.release(held)
    assert (kv.used, kv.sessions) == (0, 0)
    assert (await kv.reserve(10, timeout=0)).nbytes == 10
