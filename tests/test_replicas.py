"""Replica acknowledgement: ``replicas=N`` waits (``WAIT``) for the replicas of a real
primary, refuses an acquire they did not acknowledge, and counts such an extension as
failed, so that a holder whose writes stop reaching its replicas loses its lease.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from asynclock import LockBackendError, LockLost, MultiLock, Mutex, Semaphore, locked
from asynclock._names import owner_key
from asynclock._server import LocalCluster, RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it, on 127.0.0.1."""
    with RedisServer() as primary:
        replica = RedisServer(args=("--replicaof", "127.0.0.1", str(primary.port)))
        with replica:
            wait_for_link(primary)
            yield primary, replica


def wait_for_link(primary: RedisServer) -> None:
    """Wait until the primary has a replica online."""
    import redis as sync_redis

    with sync_redis.Redis(port=primary.port) as client:
        deadline = time.monotonic() + 20
        while client.info("replication").get("connected_slaves", 0) < 1:
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        # Online: it acknowledges writes (WAIT answers 1).
        while client.wait(1, 100) < 1:
            assert time.monotonic() < deadline, "the replica does not acknowledge"


@pytest.fixture
async def primary_client(servers: tuple[RedisServer, RedisServer]) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(servers[0].url)
    yield client
    await client.aclose()


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP) inside the block: it acknowledges nothing."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_an_acquire_waits_until_the_replica_holds_the_lock(
    servers: tuple[RedisServer, RedisServer], primary_client: redis.Redis
) -> None:
    replica = redis.Redis.from_url(servers[1].url)
    try:
        locks = [
            (Mutex(primary_client, "r1", replicas=1), ["r1"]),
            (MultiLock(primary_client, ["r2", "r3"], replicas=1), ["r2", "r3"]),
        ]
        for lock, names in locks:
            async with lock as lease:
                # Acknowledged: the replica has it before acquire returns.
                for name in names:
                    key = owner_key("asynclock:", name)
                    assert await replica.get(key) == lease.token.encode()
                await lease.extend()
        async with Semaphore(primary_client, "r4", limit=2, replicas=1):
            pass
    finally:
        await replica.aclose()


async def test_an_acquire_the_replica_does_not_acknowledge_raises_and_holds_nothing(
    servers: tuple[RedisServer, RedisServer], primary_client: redis.Redis
) -> None:
    lock = Mutex(primary_client, "unacked", replicas=1, replica_timeout=0.3)
    with frozen(servers[1]):
        began = time.monotonic()
        with pytest.raises(LockBackendError, match="replicas acknowledged"):
            await lock.acquire(timeout=5)
        took = time.monotonic() - began
        # Given back: the primary holds nothing, although the script took the name.
        assert not await Mutex(primary_client, "unacked").locked()
    assert took < 2
    # The replica back: the same lock object acquires again.
    assert await lock.acquire()
    await lock.release()


async def test_a_lock_asking_more_replicas_than_there_are_is_refused(
    primary_client: redis.Redis,
) -> None:
    with pytest.raises(LockBackendError, match="1 of 2 replicas"):
        await Mutex(primary_client, "two", replicas=2, replica_timeout=0.2).acquire()
    assert not await Mutex(primary_client, "two").locked()


async def test_a_holder_whose_extensions_go_unacknowledged_loses_its_lease(
    servers: tuple[RedisServer, RedisServer], primary_client: redis.Redis
) -> None:
    lost_after = None
    with pytest.raises(LockLost):
        async with Mutex(primary_client, "isolated", ttl=1.5, replicas=1, replica_timeout=0.2):
            with frozen(servers[1]):
                began = time.monotonic()
                try:
                    await asyncio.sleep(5)  # cancelled by the loss
                finally:
                    lost_after = time.monotonic() - began
    # Every extension failed from the freeze on: lost at the lease's deadline, within
    # the TTL, although the primary itself kept answering.
    assert lost_after is not None
    assert lost_after < 1.6


async def test_without_replicas_asked_nothing_waits_for_them(
    servers: tuple[RedisServer, RedisServer], primary_client: redis.Redis
) -> None:
    with frozen(servers[1]):
        began = time.monotonic()
        async with Mutex(primary_client, "plain", ttl=1) as lease:
            await lease.extend()
        assert time.monotonic() - began < 0.5


async def test_a_decorated_function_waits_for_replicas(
    servers: tuple[RedisServer, RedisServer], primary_client: redis.Redis
) -> None:
    @locked("job:{n}", client=primary_client, replicas=1, replica_timeout=0.2)
    async def job(n: int) -> int:
        return n

    assert await job(1) == 1
    with frozen(servers[1]), pytest.raises(LockBackendError):
        await job(2)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"replicas": -1}, ValueError),
        ({"replicas": 65}, ValueError),
        ({"replicas": True}, TypeError),
        ({"replicas": 1.0}, TypeError),
        ({"replicas": 1, "replica_timeout": 0}, ValueError),
        ({"replicas": 1, "replica_timeout": "1"}, TypeError),
        ({"replicas": 1, "ttl": 3, "replica_timeout": 1.0}, ValueError),  # >= ttl / 3
    ],
)
def test_bad_replica_settings_are_refused_before_any_command(
    options: dict[str, object], error: type[Exception]
) -> None:
    client = redis.Redis(port=1)  # nothing listens: a command would fail differently
    with pytest.raises(error):
        Mutex(client, "x", **options)  # type: ignore[arg-type]
    with pytest.raises(error):
        locked("x", client=client, **options)  # type: ignore[call-overload]


async def test_a_cluster_lock_waits_for_the_replica_of_its_own_shard() -> None:
    with LocalCluster(primaries=3, replicas=1) as cluster:
        client = RedisCluster.from_url(cluster.url)
        try:
            await client.initialize()
            for primary, (replica,) in zip(cluster.servers, cluster.replicas, strict=True):
                # A name whose slot this primary serves.
                name = next(
                    f"jobs:{n}" for n in range(1000)
                    if client.get_node_from_key(owner_key("asynclock:", f"jobs:{n}")).port
                    == primary.port
                )  # fmt: skip
                # A live replica acknowledges at once; 2 s leaves room for a busy machine.
                async with Mutex(client, name, replicas=1, replica_timeout=2.0) as lease:
                    await lease.extend()
                with frozen(replica), pytest.raises(LockBackendError, match="replicas"):
                    await Mutex(client, name, replicas=1, replica_timeout=0.3).acquire()
                assert not await Mutex(client, name).locked()
            # Across slots: each group waits for its own shard's replica.
            names = [f"jobs:{n}" for n in range(6)]
            async with MultiLock(client, names, replicas=1, replica_timeout=2.0) as lease:
                assert set(lease.fencing_tokens) == set(names)
        finally:
            await client.aclose()
