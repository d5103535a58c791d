"""Failover on a real cluster: a primary SIGKILLed while a lock on it is held and a
waiter waits, its replica promoted by the cluster.

With ``replicas=1`` the lock was on the replica before the holder's body ran, so the
promoted replica has it: no newcomer can take it there. The promoted replica has no
replica of its own, so no extension is acknowledged any more: the holder loses its
lease at its deadline (its body cancelled), gives the key back, and only then does the
waiter, which rode out the failover, get the lock, with a higher fencing token. Never
two holders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from asynclock import LockLost, Mutex
from asynclock._names import owner_key
from asynclock._server import LocalCluster

pytestmark = pytest.mark.slow

NODE_TIMEOUT_MS = 1000


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Three primaries with a replica each, failing over after a second: its own,
    since the test kills a primary."""
    with LocalCluster(primaries=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS) as local:
        yield local


def primary_of(client: RedisCluster, name: str) -> int:
    """The port of the primary serving ``name``'s slot, as the client sees it."""
    node = client.get_node_from_key(owner_key("asynclock:", name))
    assert node is not None
    return int(node.port)


def promoted(replica_port: int) -> bool:
    """Whether the replica now serves as a primary."""
    with redis.Redis(port=replica_port) as node:
        return node.info("replication")["role"] == "master"


async def test_with_replicas_a_failover_never_lets_a_second_holder_in(
    cluster: LocalCluster,
) -> None:
    holder_client = RedisCluster.from_url(cluster.url)
    waiter_client = RedisCluster.from_url(cluster.url)
    try:
        await holder_client.initialize()
        await waiter_client.initialize()
        name = "jobs:failover"
        index = [server.port for server in cluster.servers].index(primary_of(holder_client, name))
        primary, (replica,) = cluster.servers[index], cluster.replicas[index]
        ttl = 3.0
        holder = Mutex(holder_client, name, ttl=ttl, replicas=1, replica_timeout=0.5)
        waiter = Mutex(waiter_client, name, ttl=ttl)
        lost_at = None
        with pytest.raises(LockLost):
            async with holder as lease:
                first_token = lease.fencing_token
                waiting = asyncio.create_task(waiter.acquire(timeout=40))
                await asyncio.sleep(0.5)  # the waiter refused, waiting
                assert not waiting.done()
                primary.kill()
                killed = time.monotonic()
                try:
                    await asyncio.sleep(30)  # cancelled by the loss
                finally:
                    lost_at = time.monotonic()
        acquired = await asyncio.wait_for(waiting, 30)
        acquired_at = time.monotonic()
        assert acquired
        assert promoted(replica.port)  # the waiter got it from the promoted replica
        assert lost_at is not None
        assert lost_at - killed < ttl + 0.5  # at the lease's deadline on its own clock
        # The holder's body had ended before the waiter held the lock.
        assert waiter.fencing_token > first_token
        assert acquired_at >= lost_at
        await waiter.release()
        print(
            f"holder lost {lost_at - killed:.2f} s after the kill, "
            f"waiter held it {acquired_at - killed:.2f} s after"
        )
    finally:
        await holder_client.aclose()
        await waiter_client.aclose()
