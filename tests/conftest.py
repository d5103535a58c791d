"""Fixtures: a private Redis-compatible server on 127.0.0.1, and clients to it.

Set ``ASYNCLOCK_TEST_REDIS_URL`` to run against a server of your own instead; the
suite flushes its database between tests, so never point it at data you keep.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock._server import RedisServer

if os.environ.get("ASYNCLOCK_TEST_LOOP") == "uvloop":  # make test runs the suite on both

    @pytest.fixture(scope="session")
    def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
        """uvloop's event loop for every test, instead of asyncio's own."""
        import uvloop

        return uvloop.EventLoopPolicy()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of the test server, started for the session unless given."""
    external = os.environ.get("ASYNCLOCK_TEST_REDIS_URL")
    if external:
        yield external
        return
    # DEBUG SLEEP lets tests keep the server busy while a command is in flight: from
    # 7.0 on it must be enabled (6.2 has no such setting, and allows it).
    server = RedisServer()
    if server.version >= (7, 0):
        server.args = ("--enable-debug-command", "local")
    with server:
        yield server.url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client of the test server, on a flushed database."""
    connection = redis.Redis.from_url(redis_url)
    await connection.flushdb()
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def make_client(redis_url: str) -> AsyncIterator[Callable[..., redis.Redis]]:
    """A factory of extra clients to the test server (each with its own pool)."""
    made: list[redis.Redis] = []

    def make(**options: Any) -> redis.Redis:
        connection = redis.Redis.from_url(redis_url, **options)
        made.append(connection)
        return connection

    yield make
    for connection in made:
        await connection.aclose()


def owner_key(name: str) -> str:
    """The owner key of a lock name under the default prefix."""
    return f"asynclock:lock:{{{name}}}"


async def loop_turns(make_lock: Callable[[], Any]) -> int:
    """How many turns of the event loop an uncontended ``make_lock().acquire()`` takes.

    Tests that cancel an acquire at a random turn draw from this, so that
    cancellations land before, during and after its commands whatever the client
    library's version (each awaits a different number of times per command). The
    median of five acquires, after one that loads the scripts and connects.
    """
    counts = []
    for _ in range(6):
        lock = make_lock()
        task = asyncio.ensure_future(lock.acquire())
        turns = 0
        while not task.done():
            await asyncio.sleep(0)
            turns += 1
        assert await task
        await lock.release()
        counts.append(turns)
    return sorted(counts[1:])[2]
