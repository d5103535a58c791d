"""asynclock on fakeredis, which many users test their own services with.

This shows compatibility only; distributed behaviour is tested on a real server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from asynclock import LockLost, MultiLock, Mutex, ReadWriteLock, Semaphore, SingleFlight

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


async def test_single_flight_works_on_fake_async_redis() -> None:
    client = fakeredis.FakeAsyncRedis()
    runs = 0

    async def job() -> dict[str, int]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return {"runs": runs}

    flights = [SingleFlight(client, "f", keep_for=5) for _ in range(5)]
    assert await asyncio.gather(*(f.run(job) for f in flights)) == [{"runs": 1}] * 5
    assert await SingleFlight(client, "f", keep_for=5).run(job) == {"runs": 1}  # kept
    await client.aclose()


async def test_read_write_lock_works_on_fake_async_redis() -> None:
    client = fakeredis.FakeAsyncRedis()
    rw = ReadWriteLock(client, "catalog", ttl=5)
    async with rw.read(), ReadWriteLock(client, "catalog").read():
        assert await rw.readers() == 2
        assert not await ReadWriteLock(client, "catalog").write().acquire(blocking=False)
    async with rw.write() as write:
        assert not await ReadWriteLock(client, "catalog").read().acquire(blocking=False)
    async with rw.read() as read:
        assert read.fencing_token == write.fencing_token
    await client.aclose()


@pytest.mark.parametrize("lua", ["5.1", "5.4"])
def test_every_script_runs_on_the_lua_versions_fakeredis_offers(lua: str) -> None:
    # fakeredis picks its Lua when it is imported: a process of its own per version.
    program = """
import asyncio, fakeredis
from asynclock import Mutex, ReadWriteLock, Semaphore, SingleFlight
from asynclock._permits import SemaphorePermits

async def main():
    client = fakeredis.FakeAsyncRedis()
    # A holder that crashed: its permit expires while another's keeps the keys, and
    # the next acquire purges it.
    permits = SemaphorePermits("asynclock:", "q", 2, 1)
    assert (await permits.acquire(client, "crashed", 50)).acquired
    assert (await permits.acquire(client, "alive", 30_000)).acquired
    await asyncio.sleep(0.1)
    async with Semaphore(client, "q", limit=2):
        pass
    async with Mutex(client, "x"):
        pass
    async def job():
        return 1
    assert await SingleFlight(client, "f", keep_for=1).run(job) == 1
    assert await SingleFlight(client, "f", keep_for=1).run(job) == 1
    rw = ReadWriteLock(client, "rw")
    async with rw.read():
        pass
    async with rw.write():
        pass

asyncio.run(main())
"""
    environment = {**os.environ, "FAKEREDIS_LUA_VERSION": lua}
    done = subprocess.run(
        [sys.executable, "-c", program], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
