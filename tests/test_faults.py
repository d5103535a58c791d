"""Faults against real server processes: unreachable, paused and restarted servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asynclock import LockBackendError, LockLost, MultiLock, Mutex, Semaphore, _scripts
from asynclock._lock import LeaseLock
from asynclock._names import NamedLocks
from asynclock._server import RedisServer, free_port

from .conftest import owner_key


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, which it may pause, kill and restart."""
    with RedisServer() as server:
        yield server


async def test_an_unreachable_server_raises_lock_backend_error() -> None:
    # No retries inside redis-py, so that the error surfaces at once.
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    lock = Mutex(client, "x")
    with pytest.raises(LockBackendError) as caught:
        await lock.acquire()
    assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert not lock.owned
    with pytest.raises(LockBackendError):
        async with lock:
            pytest.fail("the body must not run")
    with pytest.raises(LockBackendError):
        await lock.locked()
    await client.aclose()


async def test_extensions_are_retried_through_a_short_stall(own_server: RedisServer) -> None:
    client = redis.Redis.from_url(own_server.url, socket_timeout=0.1)
    admin = redis.Redis.from_url(own_server.url)
    async with Mutex(client, "x", ttl=1.5, extend_interval=0.2) as lease:
        # Writes (our extension scripts) stall for 0.6 s: extensions time out and are
        # retried, and the lease survives since the stall is shorter than its TTL.
        await admin.client_pause(600, all=False)
        await asyncio.sleep(1.2)
        assert lease.owned
        assert await client.get(owner_key("x")) == lease.token.encode()
    assert lease.extensions >= 3
    await client.aclose()
    await admin.aclose()


PRIMITIVES: dict[str, Callable[[redis.Redis, float], LeaseLock]] = {
    "mutex": lambda client, ttl: Mutex(client, "x", ttl=ttl),
    "semaphore": lambda client, ttl: Semaphore(client, "x", limit=2, ttl=ttl),
    "multilock": lambda client, ttl: MultiLock(client, ["x", "y"], ttl=ttl),
}


@pytest.mark.parametrize("primitive", PRIMITIVES)
async def test_a_stall_longer_than_the_ttl_loses_the_lock_on_the_clients_deadline(
    own_server: RedisServer, primitive: str
) -> None:
    client = redis.Redis.from_url(own_server.url, socket_timeout=0.1)
    admin = redis.Redis.from_url(own_server.url)
    ttl = 0.6
    with pytest.raises(LockLost, match="ran out"):
        async with PRIMITIVES[primitive](client, ttl) as lease:
            await admin.client_pause(3000, all=False)
            await asyncio.sleep(5)
    # Lost at the deadline measured from the last good extension, within the TTL.
    assert time.monotonic() - lease.acquired_at < 2 * ttl
    await admin.client_unpause()
    await client.aclose()
    await admin.aclose()


@pytest.mark.parametrize("primitive", PRIMITIVES)
async def test_a_server_restart_loses_the_lock_and_the_client_recovers(
    own_server: RedisServer, primitive: str
) -> None:
    client = redis.Redis.from_url(own_server.url)
    ttl = 0.9
    with pytest.raises(LockLost):
        async with PRIMITIVES[primitive](client, ttl):
            own_server.restart()  # killed and started empty on the same port
            restarted = time.monotonic()
            await asyncio.sleep(5)
    detection = time.monotonic() - restarted
    assert detection < ttl
    # The client reconnects: the lock works again.
    lock = PRIMITIVES[primitive](client, ttl)
    async with lock:
        assert await lock.locked() == (primitive != "semaphore")
        assert lock.owned
    assert not await lock.locked()
    await client.aclose()


async def test_a_waiter_with_a_deadline_rides_out_a_restart(own_server: RedisServer) -> None:
    client = redis.Redis.from_url(own_server.url)  # redis-py's default retry policy
    try:
        assert await Mutex(client, "ride", ttl=30).acquire()
        assert await Semaphore(client, "ride-sem", limit=1, ttl=30).acquire()
        waiters = [
            asyncio.create_task(Mutex(client, "ride").acquire(timeout=15)),
            asyncio.create_task(Semaphore(client, "ride-sem", limit=1).acquire(timeout=15)),
        ]
        await asyncio.sleep(0.3)
        own_server.kill()  # the holder's lock dies with the server
        await asyncio.sleep(1.5)  # the waiters' tries fail meanwhile
        assert not any(waiter.done() for waiter in waiters)
        own_server.start()
        back = time.monotonic()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 10) == [True, True]
        assert time.monotonic() - back < 2  # at their next re-check
    finally:
        await client.aclose()


async def test_a_waiter_raises_the_outage_when_its_deadline_passes(
    own_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_server.url)
    try:
        holder = Mutex(client, "down", ttl=30)
        assert await holder.acquire()
        waiter = asyncio.create_task(Mutex(client, "down").acquire(timeout=1.5))
        await asyncio.sleep(0.2)
        own_server.kill()
        began = time.monotonic()
        with pytest.raises(LockBackendError) as caught:
            await waiter
        assert time.monotonic() - began > 1.0  # at its deadline, not at the first error
        assert isinstance(caught.value.__cause__, RedisConnectionError)
        # Without a deadline, or trying once, the error comes at once.
        for blocking in (True, False):
            began = time.monotonic()
            with pytest.raises(LockBackendError):
                await Mutex(client, "elsewhere").acquire(blocking)
            assert time.monotonic() - began < 1.0
    finally:
        await client.aclose()


async def test_a_client_that_retries_nothing_gets_the_error_at_once(
    own_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_server.url, retry=Retry(NoBackoff(), 0))
    try:
        own_server.kill()
        began = time.monotonic()
        with pytest.raises(LockBackendError):
            await Mutex(client, "now").acquire(timeout=5)
        assert time.monotonic() - began < 1.0
    finally:
        await client.aclose()


async def test_a_script_call_cut_off_by_the_socket_timeout_leaves_the_connection_in_step(
    own_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_server.url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    admin = redis.Redis.from_url(own_server.url)
    try:
        before = Mutex(client, "before")
        assert await before.acquire(blocking=False)  # connected
        await admin.client_pause(600, all=False)  # writes (our scripts) stall
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await _scripts.ACQUIRE(client, NamedLocks("asynclock:", ("x",)).keys, ("t", 30000))
        # The client's own timeout (uvloop may fire its timer a hair early).
        assert 0.19 <= time.monotonic() - started < 0.5
        await asyncio.sleep(0.6)
        # No late reply to the cut-off call is read as another's: each call gets its
        # own, and the connection keeps its timeout.
        assert before.lease is not None
        assert await client.get(owner_key("before")) == before.lease.token.encode()
        await before.release()
        (connection,) = client.connection_pool._available_connections
        assert connection.socket_timeout == 0.2
    finally:
        await client.aclose()
        await admin.aclose()
