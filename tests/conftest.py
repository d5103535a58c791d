"""Fixtures: a private Redis-compatible server on 127.0.0.1, and clients to it.

Set ``ASYNCLOCK_TEST_REDIS_URL`` to run against a server of your own instead; the
suite flushes its database between tests, so never point it at data you keep.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis

from asynclock._server import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of the test server, started for the session unless given."""
    external = os.environ.get("ASYNCLOCK_TEST_REDIS_URL")
    if external:
        yield external
        return
    with RedisServer() as server:
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
def make_client(redis_url: str) -> Iterator[object]:
    """A factory of extra clients (each with its own pool), closed after the test."""
    made: list[redis.Redis] = []

    def make(**options: object) -> redis.Redis:
        connection = redis.Redis.from_url(redis_url, **options)  # type: ignore[arg-type]
        made.append(connection)
        return connection

    yield make
    for connection in made:
        # Closing is best effort: a test may have broken the connection on purpose.
        connection.connection_pool.disconnect  # noqa: B018  (keeps the reference alive)
