"""Wake-up by notification: releases publish, waiters wake at once, one connection serves all."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as redis

from asynclock import LinearBackoff, Mutex, Semaphore

from .conftest import owner_key

SLOW_POLL = LinearBackoff(delay=5.0, jitter=0)  # polling alone would take 5 s


async def pubsub_connections(client: redis.Redis) -> int:
    """How many connections of the server are in pub/sub mode."""
    return sum(1 for entry in await client.client_list() if int(entry.get("sub", 0)) > 0)


async def test_a_release_wakes_a_waiter_at_once(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)  # subscribed and waiting
    released = time.monotonic()
    await holder.release()
    assert await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released < 0.2  # a notification, not a 5 s poll


async def test_a_released_permit_wakes_a_semaphore_waiter(client: redis.Redis) -> None:
    holders = [Semaphore(client, "q", limit=2, ttl=30) for _ in range(2)]
    for holder in holders:
        await holder.acquire()
    waiter = asyncio.create_task(Semaphore(client, "q", limit=2, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    released = time.monotonic()
    await holders[0].release()
    assert await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released < 0.2
    await holders[1].release()


async def test_one_connection_serves_every_waiter_and_channels_are_dropped(
    client: redis.Redis,
) -> None:
    names = [f"n{n}" for n in range(20)]
    holders = [Mutex(client, name, ttl=30) for name in names]
    for holder in holders:
        await holder.acquire()

    async def waiter(name: str) -> None:
        async with Mutex(client, name, ttl=30, retry=SLOW_POLL):
            pass  # and hand over to the next

    waiters = [asyncio.create_task(waiter(name)) for name in names for _ in range(10)]
    await asyncio.sleep(0.3)
    assert await pubsub_connections(client) == 1  # 200 waiters, one subscriber
    assert len(await client.pubsub_channels("asynclock:*")) == len(names)
    for holder in holders:
        await holder.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 10)  # notifications only: no 5 s poll
    await asyncio.sleep(0.1)
    assert await client.pubsub_channels("asynclock:*") == []  # nobody waits any more


async def test_a_lost_notification_costs_a_recheck_not_a_hang(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30).acquire())  # default retry
    await asyncio.sleep(0.2)
    await client.delete(owner_key("x"))  # freed without a release: no notification
    freed = time.monotonic()
    assert await asyncio.wait_for(waiter, 3)
    assert time.monotonic() - freed < 1.0  # the fallback re-check, every 0.25 s


async def test_waiters_in_one_process_get_the_lock_in_arrival_order(client: redis.Redis) -> None:
    lock_name = "fifo"
    holder = Mutex(client, lock_name, ttl=30)
    await holder.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with Mutex(client, lock_name, ttl=30, timeout=20):
            order.append(n)
            await asyncio.sleep(0.005)

    tasks = []
    for n in range(8):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0.02)  # arrive one after another
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_a_cancelled_waiter_unsubscribes(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    assert await client.pubsub_channels("asynclock:*") == [owner_key("x").encode()]
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert await client.pubsub_channels("asynclock:*") == []
    await holder.release()


async def test_waiters_arriving_during_a_first_try_keep_their_order(client: redis.Redis) -> None:
    holder = Mutex(client, "fifo2", ttl=30)
    await holder.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with Mutex(client, "fifo2", ttl=30, timeout=20):
            order.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0)  # the next arrives while the first try is in flight
    await asyncio.sleep(0.2)
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == list(range(5))


async def test_a_pool_of_one_connection_still_waits(redis_url: str) -> None:
    single = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(redis_url, max_connections=1)
    )
    holder = Mutex(single, "one", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(single, "one", ttl=30).acquire())
    await asyncio.sleep(0.2)
    await holder.release()
    assert await asyncio.wait_for(waiter, 5)  # by polling: no connection for a subscriber
    await single.aclose()
