"""Thousands of acquires and releases cancelled at random moments, then a leak count."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import (
    LockNotAcquired,
    MultiLock,
    Mutex,
    ReadWriteLock,
    Semaphore,
    SingleFlight,
    _flight,
)
from asynclock import _aio as lease_module
from asynclock._lock import LeaseLock

pytestmark = pytest.mark.slow

NAMES = [f"storm:{n}" for n in range(4)]


def make_lock(client: redis.Redis, rng: random.Random) -> LeaseLock:
    """A random primitive over random names."""
    kind = rng.randrange(5)
    if kind == 0:
        return Mutex(client, rng.choice(NAMES), ttl=30, timeout=0.5)
    if kind == 1:
        return Semaphore(client, rng.choice(NAMES), limit=2, ttl=30, timeout=0.5)
    if kind == 2:
        return MultiLock(client, rng.sample(NAMES, 2), ttl=30, timeout=0.5)
    rw = ReadWriteLock(client, rng.choice(NAMES), ttl=30, timeout=0.5)
    return rw.read() if kind == 3 else rw.write()


async def cancel_most(tasks: list[asyncio.Task[Any]], rng: random.Random) -> list[Any]:
    """Let ``tasks`` run a random number of turns, cancel 70% of them, and return every
    task's outcome (its value or its exception)."""
    for _ in range(rng.randrange(12)):
        await asyncio.sleep(0)
    for task in tasks:
        if rng.random() < 0.7:
            task.cancel()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def background_done() -> None:
    """Assert that the clean-ups left to the background finish promptly (1 s)."""
    for _ in range(100):
        if not lease_module._background:
            break
        await asyncio.sleep(0.01)
    assert not lease_module._background


async def only_this_task_left() -> None:
    """Assert that no task but this one is left within 3 s (the notification reader
    lingers a second after the last channel)."""
    for _ in range(300):
        if asyncio.all_tasks() == {asyncio.current_task()}:
            break
        await asyncio.sleep(0.01)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_cancellation_storm_leaves_nothing_held_and_nothing_running(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rng = random.Random(5)
    worker_client = make_client()
    outcomes = {"completed": 0, "cancelled": 0, "timed out": 0}

    async def use(lock: LeaseLock) -> None:
        async with lock:
            await asyncio.sleep(rng.uniform(0, 0.002))

    for _ in range(60):  # 60 rounds x 50 tasks = 3000 operations
        tasks = [asyncio.create_task(use(make_lock(worker_client, rng))) for _ in range(50)]
        for result in await cancel_most(tasks, rng):
            if isinstance(result, asyncio.CancelledError):
                outcomes["cancelled"] += 1
            elif result is None:
                outcomes["completed"] += 1
            else:
                assert isinstance(result, LockNotAcquired), result
                outcomes["timed out"] += 1
    assert outcomes["cancelled"] > 1000, outcomes
    assert outcomes["completed"] > 100, outcomes
    # Clean-ups that a timed-out wait left to the background finish promptly.
    await background_done()
    # Nothing held: no owner key, no semaphore holder.
    owners = await client.keys("asynclock:lock:*")
    assert owners == []
    assert await client.keys("asynclock:semaphore:*:holders") == []
    assert await client.keys("asynclock:rwlock:*:writer") == []
    assert await client.keys("asynclock:rwlock:*:readers") == []
    # Nothing running: no task but this one (the notification reader stops once
    # nobody waits); no connection left in use.
    await only_this_task_left()
    pool = worker_client.connection_pool
    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]


async def test_a_cancellation_storm_of_single_flights_leaves_nothing_behind(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rng = random.Random(6)
    clients = [make_client(), make_client()]
    outcomes = {"completed": 0, "cancelled": 0}

    async def job() -> int:
        await asyncio.sleep(rng.uniform(0, 0.003))
        return 1

    for _ in range(40):  # 40 rounds x 50 callers = 2000 calls
        tasks = [
            asyncio.create_task(
                SingleFlight(rng.choice(clients), rng.choice(NAMES), ttl=30).run(job)
            )
            for _ in range(50)
        ]
        for result in await cancel_most(tasks, rng):
            if isinstance(result, asyncio.CancelledError):
                outcomes["cancelled"] += 1
            else:
                assert result == 1, result
                outcomes["completed"] += 1
    assert outcomes["cancelled"] > 500, outcomes
    assert outcomes["completed"] > 100, outcomes
    await background_done()
    assert await client.keys("asynclock:lock:*") == []  # no leader's lease left
    assert all(not _flight._flights.get(c) for c in clients)  # no flight left here
    await only_this_task_left()
