"""Network faults through a TCP proxy on loopback: latency, cut connections, blackhole.

In every case an acquire either truly succeeds (Redis holds our token, checked on a
direct connection), or raises LockBackendError, or returns not-acquired within its
timeout; a holder that cannot extend loses the lock on its own deadline; and
everything works again once the fault clears.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from asynclock import LockBackendError, LockLost, Mutex
from asynclock._server import RedisServer

from .conftest import owner_key
from .proxy import FaultProxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A server of this module's own."""
    with RedisServer() as own:
        yield own


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the server."""
    with FaultProxy(server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def direct(server: RedisServer) -> AsyncIterator[redis.Redis]:
    """A client that bypasses the proxy: the truth about what Redis holds."""
    client = redis.Redis.from_url(server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def through(proxy: FaultProxy) -> AsyncIterator[redis.Redis]:
    """A client through the proxy, with short timeouts and few retries."""
    client = redis.Redis.from_url(
        proxy.url,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 2),
    )
    yield client
    await client.aclose()


async def check_truth(lock: Mutex, acquired: bool, direct: redis.Redis, name: str) -> None:
    """An acquire that said yes must be backed by our token in Redis."""
    if acquired:
        assert lock.lease is not None
        assert await direct.get(owner_key(name)) == lock.lease.token.encode()


async def test_latency_slows_but_breaks_nothing(
    proxy: FaultProxy, through: redis.Redis, direct: redis.Redis
) -> None:
    proxy.delay(0.05)  # 100 ms more per round trip
    lock = Mutex(through, "x", ttl=1.0)
    async with lock as lease:
        await check_truth(lock, True, direct, "x")
        await asyncio.sleep(1.5)  # extensions go through, slowly
        assert lease.owned
    assert lease.extensions >= 3
    assert await direct.exists(owner_key("x")) == 0


async def test_cut_connections_never_fake_an_acquire_and_recover(
    proxy: FaultProxy, direct: redis.Redis
) -> None:
    # No retries inside redis-py: a cut surfaces as an error instead of a resend.
    through = redis.Redis.from_url(proxy.url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    outcomes = {"acquired": 0, "error": 0, "not acquired": 0}
    for n in range(60):
        lock = Mutex(through, "x", ttl=5)
        attempt = asyncio.create_task(lock.acquire(timeout=1.0))
        await asyncio.sleep(0.0005 * (n % 10))
        proxy.cut()  # possibly while the command is on the wire
        try:
            acquired = await attempt
        except LockBackendError:
            outcomes["error"] += 1
            continue
        outcomes["acquired" if acquired else "not acquired"] += 1
        await check_truth(lock, acquired, direct, "x")
        if acquired:
            try:
                await lock.release()
            except LockBackendError:
                await direct.delete(owner_key("x"))  # cut again mid-release
    assert outcomes["acquired"] > 0, outcomes
    assert outcomes["error"] > 0, outcomes  # the cuts did hit commands in flight
    # Afterwards, nothing is held but what a failed acquire may have left for its TTL,
    # and the client works again.
    proxy.heal()
    await direct.delete(owner_key("x"))
    lock = Mutex(through, "x", ttl=5)
    async with lock:
        await check_truth(lock, True, direct, "x")
    await through.aclose()


async def test_a_holder_survives_a_cut_and_extends_through_a_new_connection(
    proxy: FaultProxy, through: redis.Redis, direct: redis.Redis
) -> None:
    async with Mutex(through, "x", ttl=0.9) as lease:
        for _ in range(3):
            proxy.cut()
            await asyncio.sleep(0.4)
        assert lease.owned
        assert await direct.get(owner_key("x")) == lease.token.encode()


async def test_a_blackhole_loses_the_holder_on_its_deadline_and_times_out_waiters(
    proxy: FaultProxy, through: redis.Redis, direct: redis.Redis
) -> None:
    ttl = 0.8
    with pytest.raises(LockLost, match="ran out"):
        async with Mutex(through, "x", ttl=ttl) as lease:
            proxy.blackhole()
            blackholed_at = time.monotonic()
            await asyncio.sleep(5)
    lost_after = time.monotonic() - blackholed_at
    assert lost_after < ttl + 0.3  # its own deadline, not the end of the fault
    assert time.monotonic() < lease.deadline + 0.5
    # While the fault lasts, waiters get an answer within their timeout (plus the
    # client's socket timeout for a command in flight): no or an error, never yes.
    started = time.monotonic()
    try:
        acquired = await Mutex(through, "y", ttl=5).acquire(timeout=0.3)
    except LockBackendError:
        acquired = False
    assert not acquired
    assert time.monotonic() - started < 0.3 + 0.5
    proxy.heal()
    # The key was never extended after the blackhole: it expires on the server.
    await asyncio.sleep(ttl)
    assert await direct.exists(owner_key("x")) == 0
    async with Mutex(through, "x", ttl=5) as again:
        assert await direct.get(owner_key("x")) == again.token.encode()


async def test_a_release_into_a_blackhole_ends_at_its_own_limit_and_the_connection_recovers(
    proxy: FaultProxy, server: RedisServer, direct: redis.Redis
) -> None:
    # A socket timeout far longer than the release's limit: the release's own timer
    # alone cuts the exchange off, and the connection it was on must not read the
    # late reply as the next command's.
    client = redis.Redis.from_url(proxy.url, socket_timeout=30, max_connections=1)
    try:
        lock = Mutex(client, "r", ttl=1.0, auto_extend=False)
        assert await lock.acquire()
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(LockBackendError, match="release"):
            await lock.release()
        took = time.monotonic() - started
        assert took < 5  # the release's limit (at most a few seconds), not 30 s
        proxy.heal()
        await asyncio.sleep(1.2)  # the lease expires on the server
        async with Mutex(client, "r", ttl=5) as lease:
            assert await direct.get(owner_key("r")) == lease.token.encode()
        assert await client.ping()
    finally:
        await client.aclose()
