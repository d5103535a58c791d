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
    # DEBUG SLEEP lets tests keep the server busy while a command is in flight.
    with RedisServer(args=("--enable-debug-command", "local")) as server:
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
