"""asynclock on fakeredis, which many users test their own services with.

This shows compatibility only; distributed behaviour is tested on a real server.
"""

from __future__ import annotations

import asyncio

import pytest

from asynclock import LockLost, MultiLock, Mutex, Semaphore

fakeredis = pytest.importorskip("fakeredis")
pytest.importorskip("lupa")


async def test_mutex_works_on_fake_async_redis() -> None:
    client = fakeredis.FakeAsyncRedis()
    lock = Mutex(client, "x", ttl=0.3)
    tokens = []
    for _ in range(3):
        async with lock as lease:
            tokens.append(lease.fencing_token)
            assert await lock.locked()
            assert not await Mutex(client, "x").acquire(blocking=False)
            await asyncio.sleep(0.4)  # longer than the TTL: auto-extend keeps it
            await lease.extend()
    assert tokens == sorted(set(tokens))
    assert not await lock.locked()
    with pytest.raises(LockLost):
        async with Mutex(client, "y", ttl=0.3):
            await client.delete("asynclock:lock:{y}")
            await asyncio.sleep(2)
    await client.aclose()


async def test_semaphore_and_multilock_work_on_fake_async_redis() -> None:
    client = fakeredis.FakeAsyncRedis()
    semaphore = Semaphore(client, "q", limit=2)
    async with semaphore:
        assert await semaphore.holders() == 1
        assert await Semaphore(client, "q", limit=2).acquire(blocking=False)
        assert not await Semaphore(client, "q", limit=2).acquire(blocking=False)
    async with MultiLock(client, ["a", "b"]) as lease:
        assert set(lease.fencing_tokens) == {"a", "b"}
        assert not await Mutex(client, "b").acquire(blocking=False)
    await client.aclose()
