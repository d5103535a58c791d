"""asynclock under anyio's asyncio backend, which FastAPI and Starlette run on.

Cancel scopes around an acquire and around ``async with``, task groups whose sibling
fails, and a loss inside a task group, on the real test server. trio is not supported:
asynclock is built on asyncio primitives (tasks, ``asyncio.timeout``, redis-py's
asyncio client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as redis

from asynclock import LockLost, Mutex, SingleFlight

from .conftest import owner_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connected(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client on the test server (not a fixture: pytest-asyncio would run it on
    another event loop than anyio's test runner)."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_move_on_after_around_a_waiting_acquire_leaves_nothing_held(redis_url: str) -> None:
    async with connected(redis_url) as client:
        holder = Mutex(client, "held", ttl=30)
        async with anyio.create_task_group() as group:  # another task holds it
            group.start_soon(holder.acquire)
        assert await holder.locked()
        waiter = Mutex(client, "held", ttl=30)
        with anyio.move_on_after(0.2) as scope:
            await waiter.acquire()
        assert scope.cancelled_caught
        assert not waiter.owned
        await holder.release()
        assert await client.exists(owner_key("held")) == 0  # nothing left behind


async def test_fail_after_around_a_body_releases_the_lock(redis_url: str) -> None:
    async with connected(redis_url) as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                async with Mutex(client, "body", ttl=30):
                    await anyio.sleep(5)
        assert await client.exists(owner_key("body")) == 0


async def test_a_failing_sibling_in_a_task_group_releases_the_lock(redis_url: str) -> None:
    async with connected(redis_url) as client:
        entered = anyio.Event()

        async def holds() -> None:
            async with Mutex(client, "group", ttl=30):
                entered.set()
                await anyio.sleep(5)

        async def fails() -> None:
            await entered.wait()
            raise ValueError("a sibling fails")

        with pytest.raises(ExceptionGroup) as caught:
            async with anyio.create_task_group() as group:
                group.start_soon(holds)
                group.start_soon(fails)
        assert caught.group_contains(ValueError)
        assert await client.exists(owner_key("group")) == 0


async def test_a_loss_inside_a_task_group_raises_lock_lost(redis_url: str) -> None:
    async with connected(redis_url) as client:

        async def holds() -> None:
            async with Mutex(client, "lost", ttl=0.3, auto_extend=False):
                await anyio.sleep(5)  # the lease runs out meanwhile

        with pytest.raises(ExceptionGroup) as caught:
            async with anyio.create_task_group() as group:
                group.start_soon(holds)
        assert caught.group_contains(LockLost)


async def test_a_single_flight_in_a_task_group_runs_once_and_a_cancel_scope_leaves_it(
    redis_url: str,
) -> None:
    async with connected(redis_url) as client, connected(redis_url) as other:
        runs = 0

        async def job() -> int:
            nonlocal runs
            runs += 1
            await anyio.sleep(0.1)
            return runs

        values: list[int] = []

        async def ask(on: redis.Redis) -> None:
            values.append(await SingleFlight(on, "flight", ttl=30).run(job))

        async with anyio.create_task_group() as group:
            for on in (client, other, client, other):
                group.start_soon(ask, on)
        assert (runs, values) == (1, [1, 1, 1, 1])

        async def forever() -> None:
            await anyio.sleep(60)

        with anyio.move_on_after(0.2) as scope:
            await SingleFlight(client, "stuck", ttl=30).run(forever)
        assert scope.cancelled_caught
        assert await client.exists(owner_key("stuck")) == 0  # the leader's lease released
