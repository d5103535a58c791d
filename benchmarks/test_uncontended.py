"""pytest-benchmark runs of the uncontended operations: ``pytest benchmarks/``.

Each benchmark round runs ``OPERATIONS`` operations back to back inside one
``loop.run_until_complete``, so the times pytest-benchmark reports are per round:
divide by ``OPERATIONS`` for one operation. The server is a private one on 127.0.0.1,
started once for the module. Only correctness is asserted, never timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import pytest
import redis.asyncio as aioredis

from asynclock._server import RedisServer

from ._kinds import Kind, build_kinds, check_clean, delete_keys

#: Operations per benchmark round.
OPERATIONS = 200
#: Measured rounds and warm-up rounds per benchmark.
ROUNDS = 10
WARMUP_ROUNDS = 1
#: The longest one round may take, in seconds, before it fails.
ROUND_TIME_LIMIT = 10.0

_T = TypeVar("_T")


class Benchmark(Protocol):
    """The part of pytest-benchmark's ``benchmark`` fixture used here."""

    extra_info: dict[str, Any]

    def pedantic(
        self, target: Callable[[], _T], *, rounds: int, warmup_rounds: int, iterations: int
    ) -> _T:
        """Run ``target`` for ``warmup_rounds`` untimed and ``rounds`` timed rounds."""
        ...


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module, as the client's connections belong to it."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The URL of a private server on 127.0.0.1, started for this module."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def client(server_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[aioredis.Redis]:
    """One client (hiredis parser when installed) of the private server."""
    connection = aioredis.Redis.from_url(server_url, socket_connect_timeout=10.0)
    yield connection
    loop.run_until_complete(connection.aclose())


@pytest.fixture(scope="module")
def kinds(client: aioredis.Redis, loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Kind]]:
    """The measured kinds by key; their keys are deleted afterwards."""
    built = loop.run_until_complete(build_kinds(client, "asynclock-bench"))
    yield {kind.key: kind for kind in built}
    loop.run_until_complete(delete_keys(client, built))


async def bounded(kind: Kind, n: int) -> None:
    """Run ``n`` operations of ``kind`` within ``ROUND_TIME_LIMIT`` seconds."""
    async with asyncio.timeout(ROUND_TIME_LIMIT):
        await kind.run(n)


def run_rounds(benchmark: Benchmark, loop: asyncio.AbstractEventLoop, kind: Kind) -> int:
    """Benchmark ``kind``; return how many operations ran, warm-up included."""
    rounds_run = 0

    def one_round() -> None:
        """Run ``OPERATIONS`` operations of ``kind`` to completion."""
        nonlocal rounds_run
        loop.run_until_complete(bounded(kind, OPERATIONS))
        rounds_run += 1

    benchmark.extra_info["operations_per_round"] = OPERATIONS
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    return rounds_run * OPERATIONS


async def fence_value(client: aioredis.Redis, kind: Kind) -> int:
    """Return the current value of ``kind``'s fence counter."""
    assert kind.fence_key is not None
    value = await client.get(kind.fence_key)
    assert value is not None, "the fence counter exists once the lock was acquired"
    return int(value)


@pytest.mark.parametrize("key", ["ping", "evalsha", "floor"])
def test_round_trip(
    benchmark: Benchmark,
    loop: asyncio.AbstractEventLoop,
    client: aioredis.Redis,
    kinds: dict[str, Kind],
    key: str,
) -> None:
    """The yardsticks: one command per operation, or two empty scripts (the floor)."""
    assert run_rounds(benchmark, loop, kinds[key]) >= OPERATIONS
    loop.run_until_complete(check_clean(client, [kinds[key]]))


@pytest.mark.parametrize(
    "key", ["mutex", "with", "no-extend", "decorated", "observed", "semaphore", "multilock"]
)
def test_lock_acquire_release(
    benchmark: Benchmark,
    loop: asyncio.AbstractEventLoop,
    client: aioredis.Redis,
    kinds: dict[str, Kind],
    key: str,
) -> None:
    """asynclock acquire+release pairs; every acquire takes the lock (a higher token)."""
    kind = kinds[key]
    loop.run_until_complete(kind.run(1))  # create the fence counter
    before = loop.run_until_complete(fence_value(client, kind))
    operations = run_rounds(benchmark, loop, kind)
    after = loop.run_until_complete(fence_value(client, kind))
    assert after - before >= operations  # every acquire takes a higher token
    loop.run_until_complete(check_clean(client, [kind]))


def test_redis_py_lock(
    benchmark: Benchmark,
    loop: asyncio.AbstractEventLoop,
    client: aioredis.Redis,
    kinds: dict[str, Kind],
) -> None:
    """redis-py's own asyncio Lock, the peer: acquire+release pairs."""
    kind = kinds["redis-py"]
    assert run_rounds(benchmark, loop, kind) >= OPERATIONS
    loop.run_until_complete(check_clean(client, [kind]))
