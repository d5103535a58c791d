"""Semaphore against the real server: counting, per-holder expiry, limits, loss."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import redis.asyncio as redis

from asynclock import LimitMismatch, LockLost, LockNotOwned, Semaphore
from asynclock._permits import SemaphorePermits

from .conftest import cancel_at_random_turns

HOLDERS = "asynclock:semaphore:{q}:holders"


def permits_of(name: str, limit: int, permits: int = 1) -> SemaphorePermits:
    """The keys and scripts of a semaphore, to act as a holder that never extends."""
    return SemaphorePermits("asynclock:", name, limit, permits)


async def test_at_most_limit_holders_at_once(client: redis.Redis) -> None:
    inside = most = 0
    fences: list[int] = []

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with Semaphore(client, "q", limit=3, timeout=30) as lease:
                inside += 1
                most = max(most, inside)
                fences.append(lease.fencing_token)
                await asyncio.sleep(0.003)
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(10)))
    assert most == 3
    assert len(set(fences)) == len(fences) == 50
    assert await client.exists(HOLDERS) == 0


async def test_holders_in_use_and_locked(client: redis.Redis) -> None:
    first = Semaphore(client, "q", limit=3)
    pair = Semaphore(client, "q", limit=3, permits=2)
    assert await first.acquire(blocking=False)
    assert await first.holders() == 1
    assert not await pair.locked()
    assert await pair.acquire(blocking=False)
    assert await first.holders() == 2
    assert await first.in_use() == 3
    assert await first.locked()
    await first.release()
    await pair.release()
    assert await first.holders() == 0


async def test_several_permits_are_taken_all_or_none(client: redis.Redis) -> None:
    one = Semaphore(client, "q", limit=3)
    assert await one.acquire(blocking=False)
    three = Semaphore(client, "q", limit=3, permits=3)
    assert not await three.acquire(blocking=False)
    assert await one.in_use() == 1  # nothing taken partially
    await one.release()
    assert await three.acquire(blocking=False)
    assert await one.in_use() == 3
    await three.release()


async def test_different_limits_for_one_name_are_refused(client: redis.Redis) -> None:
    three = Semaphore(client, "q", limit=3)
    assert await three.acquire()
    with pytest.raises(LimitMismatch) as caught:
        await Semaphore(client, "q", limit=5).acquire()
    assert caught.value.limit_in_force == 3
    assert await three.holders() == 1
    await three.release()
    # Once the holders with the old limit are gone, a new limit takes effect.
    five = Semaphore(client, "q", limit=5)
    assert await five.acquire()
    await five.release()


async def test_each_holder_expires_on_its_own(client: redis.Redis) -> None:
    crashed = permits_of("q", limit=2)
    assert (await crashed.acquire(client, "crashed-holder", 300)).acquired  # never extended
    live = Semaphore(client, "q", limit=2, ttl=0.3)
    assert await live.acquire()  # extended by its watchdog
    started = time.monotonic()
    async with Semaphore(client, "q", limit=2, timeout=5):
        waited = time.monotonic() - started
        assert live.owned
        assert await live.holders() == 2
    assert 0.15 < waited < 1.5
    await live.release()


async def test_expiry_is_set_on_the_servers_clock(client: redis.Redis) -> None:
    async with Semaphore(client, "q", limit=2, ttl=10) as lease:
        seconds, micros = await client.time()
        server_ms = seconds * 1000 + micros // 1000
        score = await client.zscore(HOLDERS, lease.token)
        assert score is not None
        assert abs(score - (server_ms + 10_000)) < 1000


async def test_an_extension_never_revives_an_expired_holder(client: redis.Redis) -> None:
    permits = permits_of("q", limit=2)
    assert (await permits.acquire(client, "tok", 100)).acquired
    await asyncio.sleep(0.2)  # expired, but nobody purged it yet
    assert not await permits.extend(client, "tok", 10_000)
    assert not await permits.release(client, "tok")
    assert await client.zcard(HOLDERS) == 0


async def test_a_resent_release_still_counts_as_released(client: redis.Redis) -> None:
    permits = permits_of("q", limit=2)
    assert (await permits.acquire(client, "tok", 5000)).acquired
    assert await permits.release(client, "tok")
    assert await permits.release(client, "tok")  # the same release, resent
    assert not await permits.release(client, "stranger")


async def test_a_retried_acquire_takes_no_second_permit(client: redis.Redis) -> None:
    permits = permits_of("q", limit=2)
    first = await permits.acquire(client, "tok", 5000)
    again = await permits.acquire(client, "tok", 5000)
    assert again == first
    assert (await permits.inspect(client))[:2] == (1, 1)


async def test_removing_a_holder_makes_it_lose_within_a_third_of_the_ttl(
    client: redis.Redis,
) -> None:
    ttl = 0.9
    with pytest.raises(LockLost):
        async with Semaphore(client, "q", limit=2, ttl=ttl) as lease:
            await client.zrem(HOLDERS, lease.token)
            removed = time.monotonic()
            await asyncio.sleep(5)
    assert time.monotonic() - removed < ttl / 3 + 0.2
    with pytest.raises(LockNotOwned):
        await lease.extend()


async def test_without_auto_extend_a_holder_is_lost_when_its_ttl_runs_out(
    client: redis.Redis,
) -> None:
    with pytest.raises(LockLost, match="ran out"):
        async with Semaphore(client, "q", limit=2, ttl=0.3, auto_extend=False):
            await asyncio.sleep(3)


async def test_cancelled_acquires_leave_no_holder(client: redis.Redis) -> None:
    async def no_holder() -> None:
        assert await client.zcard(HOLDERS) == 0

    cancelled, acquired = await cancel_at_random_turns(
        lambda: Semaphore(client, "q", limit=2, ttl=30), 2, no_holder
    )
    assert cancelled >= 20
    assert acquired >= 20


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"limit": 0}, ValueError),
        ({"limit": -2}, ValueError),
        ({"limit": 1.5}, TypeError),
        ({"limit": math.inf}, TypeError),
        ({"limit": True}, TypeError),
        ({"limit": "3"}, TypeError),
        ({"limit": 2, "permits": 3}, ValueError),
        ({"limit": 2, "permits": 0}, ValueError),
        ({"limit": 2, "ttl": 0}, ValueError),
    ],
)
def test_bad_semaphore_arguments_are_refused(
    client: redis.Redis, arguments: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Semaphore(client, "q", **arguments)  # type: ignore[arg-type]
