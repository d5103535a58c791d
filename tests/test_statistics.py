"""Lock statistics, and how a retry strategy paces a notified waiter, on the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as redis

from asynclock import LimitRetries, LinearBackoff, LockStatistics, Mutex, Semaphore

ONE_SLOW_RETRY = LimitRetries(LinearBackoff(1.0, jitter=0), retries=1)


async def wait_until(condition: object, seconds: float = 5.0) -> None:
    """Poll ``condition()`` until true, for at most ``seconds``."""
    assert callable(condition)
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_an_idle_lock_object_has_empty_statistics(client: redis.Redis) -> None:
    stats = Mutex(client, "s", ttl=5).statistics()
    assert stats == LockStatistics(
        held=False, waiting=0, remaining=0.0, extensions=0, acquisitions=0, hand_overs=0
    )


async def test_statistics_follow_a_holding(client: redis.Redis) -> None:
    lock = Mutex(client, "s", ttl=5)
    async with lock as lease:
        await lease.extend()
        stats = lock.statistics()
        assert stats.held
        assert 4.5 < stats.remaining <= 5.0
        assert stats.extensions == 1
        assert stats.acquisitions == 1
        with pytest.raises(AttributeError):
            stats.held = False  # type: ignore[misc]  # a frozen snapshot
    after = lock.statistics()
    assert not after.held
    assert after.remaining == 0.0
    assert after.acquisitions == 1


async def test_statistics_count_the_waiters_of_the_process_and_the_hand_overs(
    client: redis.Redis,
) -> None:
    holder = Mutex(client, "s", ttl=5)
    await holder.acquire()
    waiter_lock = Mutex(client, "s", ttl=5, timeout=5)

    async def waiter() -> None:
        async with waiter_lock:
            await asyncio.sleep(0.01)

    waiters = [asyncio.create_task(waiter()) for _ in range(3)]
    await wait_until(lambda: holder.statistics().waiting == 3)
    assert waiter_lock.statistics().waiting == 3  # any object on the client sees them
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    stats = waiter_lock.statistics()
    assert stats.acquisitions == 3
    # A release hands the lock straight to the next waiter of the process when that
    # waiter is waiting for it (not in the middle of a re-check): at least the first.
    assert 1 <= stats.hand_overs <= 3
    assert stats.waiting == 0
    assert not stats.held


async def test_a_semaphore_counts_its_waiters_too(client: redis.Redis) -> None:
    holder = Semaphore(client, "q", limit=1, ttl=5)
    await holder.acquire()
    waiter = asyncio.create_task(Semaphore(client, "q", limit=1, ttl=5, timeout=5).acquire())
    await wait_until(lambda: holder.statistics().waiting == 1)
    await holder.release()
    assert await asyncio.wait_for(waiter, 5)


async def test_a_notified_waiter_takes_the_strategys_pause_before_giving_up(
    client: redis.Redis,
) -> None:
    holder = Mutex(client, "r", ttl=30)
    await holder.acquire()
    started = time.monotonic()
    assert not await Mutex(client, "r", ttl=30, retry=ONE_SLOW_RETRY).acquire()
    # One retry after the 1 s pause: not a refusal right after the first try.
    assert 0.9 < time.monotonic() - started < 3.0
    await holder.release()


async def test_a_release_ends_the_strategys_pause_at_once(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    holder = Mutex(client, "r", ttl=30)
    await holder.acquire()
    other = make_client()  # another process: woken by a notification, not a hand-over
    waiter = asyncio.create_task(Mutex(other, "r", ttl=30, retry=ONE_SLOW_RETRY).acquire())
    await asyncio.sleep(0.3)  # refused, subscribed, waiting out its pause
    released = time.monotonic()
    await holder.release()
    assert await asyncio.wait_for(waiter, 3)
    assert time.monotonic() - released < 0.5
