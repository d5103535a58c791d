"""Sentinel on real servers: one primary, one replica, three sentinels on 127.0.0.1,
clients through ``Sentinel.master_for``, and a failover while a lock is held and a
waiter waits.

Both kinds of failover: ``SENTINEL FAILOVER`` (the primary demoted, then a replica
of the promoted one) and the primary SIGKILLed. With ``replicas=1`` no two holders
exist across either: the holder's writes are
acknowledged by the replica before they count, the waiter rides out the failover
(its deadline is far), and it takes the lock only after the holder let it go (given
back, or lost at its deadline), with a higher fencing token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.sentinel import Sentinel

from asynclock import LockLost, Mutex, connect
from asynclock._server import RedisServer, find_server_binary, free_port

pytestmark = pytest.mark.slow

SERVICE = "locks"


class SentinelProcess:
    """A sentinel on 127.0.0.1 watching ``SERVICE`` at ``primary_port``."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="asynclock-sentinel-")
        config = Path(self._dir) / "sentinel.conf"  # a sentinel rewrites its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self._process = subprocess.Popen(
            [find_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_timeout=1) as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "the sentinel did not start"
                    time.sleep(0.05)

    def stop(self) -> None:
        """Stop the sentinel."""
        self._process.kill()
        self._process.wait(5)


@pytest.fixture
def deployment() -> Iterator[tuple[RedisServer, RedisServer, list[int]]]:
    """A primary, its replica and three sentinels that agree on them."""
    with ExitStack() as stack:
        primary = stack.enter_context(RedisServer())
        replica = stack.enter_context(
            RedisServer(args=("--replicaof", "127.0.0.1", str(primary.port)))
        )
        sentinels = [SentinelProcess(primary.port) for _ in range(3)]
        stack.callback(lambda: [sentinel.stop() for sentinel in sentinels])
        deadline = time.monotonic() + 30
        with redis.Redis(port=primary.port) as client:
            while client.wait(1, 100) < 1:  # the replica online
                assert time.monotonic() < deadline, "the replica did not connect"
        for sentinel in sentinels:  # each knows the replica and the other sentinels
            with redis.Redis(port=sentinel.port) as client:
                while True:
                    master = client.sentinel_master(SERVICE)
                    if master["num-slaves"] >= 1 and master["num-other-sentinels"] >= 2:
                        break
                    assert time.monotonic() < deadline, "the sentinels did not agree"
                    time.sleep(0.1)
        with redis.Redis(port=primary.port) as client:
            # Writes reach the replica now that the sentinels are settled.
            while not (client.set("probe", "1") and client.wait(1, 1000) >= 1):
                assert time.monotonic() < deadline, "the replica does not acknowledge writes"
        yield primary, replica, [sentinel.port for sentinel in sentinels]


@pytest.fixture
async def clients(
    deployment: tuple[RedisServer, RedisServer, list[int]],
) -> AsyncIterator[tuple[Any, Any]]:
    """A holder's and a waiter's client of the service, through ``Sentinel.master_for``."""
    sentinel = Sentinel([("127.0.0.1", port) for port in deployment[2]], socket_timeout=1)
    holder_client = sentinel.master_for(SERVICE)
    waiter_client = sentinel.master_for(SERVICE)
    yield holder_client, waiter_client
    await holder_client.aclose()
    await waiter_client.aclose()


async def test_connect_to_a_sentinel_url(
    deployment: tuple[RedisServer, RedisServer, list[int]],
) -> None:
    primary, _, sentinels = deployment
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinels)
    backend = await connect(f"redis+sentinel://{hosts}/{SERVICE}/0")
    async with backend, Mutex(backend, "job", ttl=5.0) as lease:
        with redis.Redis(port=primary.port) as direct:
            assert direct.get("asynclock:lock:{job}") == lease.token.encode()


def role(port: int) -> str:
    """``master`` or ``slave``: what the server at ``port`` is now."""
    with redis.Redis(port=port) as client:
        return str(client.info("replication")["role"])


async def acquired_at(lock: Mutex) -> float:
    """Acquire ``lock`` (a far deadline) and return when it was held."""
    assert await lock.acquire(timeout=60)
    return time.monotonic()


@pytest.mark.parametrize("replicas", [1, 0])
@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "SIGKILL"])
async def test_a_sentinel_failover_with_and_without_replicas(
    deployment: tuple[RedisServer, RedisServer, list[int]],
    clients: tuple[Any, Any],
    how: str,
    replicas: int,
) -> None:
    primary, replica, sentinel_ports = deployment
    holder_client, waiter_client = clients
    ttl = 3.0
    holder = Mutex(holder_client, "nightly", ttl=ttl, replicas=replicas, replica_timeout=0.5)
    waiter = Mutex(waiter_client, "nightly", ttl=ttl)
    outcome = "released"
    try:
        async with holder as lease:
            try:
                first_token = lease.fencing_token
                waiting = asyncio.create_task(acquired_at(waiter))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                if how == "SIGKILL":
                    primary.kill()  # found down by the sentinels after a second
                else:
                    with redis.Redis(port=sentinel_ports[0]) as client:
                        client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                began = time.monotonic()
                deadline = began + 30
                while role(replica.port) != "master":
                    assert time.monotonic() < deadline, "the replica was not promoted"
                    await asyncio.sleep(0.1)
                promoted = time.monotonic() - began
                await asyncio.sleep(2 * ttl)  # extensions go on, or the lease is lost
            finally:
                ended = time.monotonic()  # the body's end: a loss cancels it here
    except LockLost:
        outcome = "lost"
    acquired = await asyncio.wait_for(waiting, 60)
    overlap = max(0.0, ended - acquired)
    assert waiter.fencing_token > first_token
    await waiter.release()
    print(
        f"{how}, replicas={replicas}: promoted after {promoted:.2f} s; the holder's lease"
        f" {outcome} {ended - began:.2f} s after; the waiter held the lock"
        f" {acquired - began:.2f} s after: two holders for {overlap:.2f} s"
    )
    if replicas:
        assert overlap == 0  # never while the holder's body ran
    # Without: whatever happened was measured, and README reports it.


async def test_without_replicas_a_primary_lost_before_its_replica_had_the_lock(
    deployment: tuple[RedisServer, RedisServer, list[int]], clients: tuple[Any, Any]
) -> None:
    """The hole ``replicas=`` closes, measured: the primary dies before its replica got
    the lock, and the promoted replica may hand it out again while the first holder
    still runs, until that holder's next extension."""
    primary, replica, _ = deployment
    holder_client, waiter_client = clients
    ttl = 3.0
    holder = Mutex(holder_client, "nightly", ttl=ttl)
    waiter = Mutex(waiter_client, "nightly", ttl=ttl)
    with redis.Redis(port=primary.port) as admin:
        # The replica frozen until the primary gives up on it (a second without an
        # acknowledgement), so that nothing written from then on reaches it.
        admin.config_set("repl-timeout", 1)
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            while admin.info("replication")["connected_slaves"]:
                assert time.monotonic() < deadline, "the primary kept its replica"
                await asyncio.sleep(0.1)
        except BaseException:
            os.kill(replica.pid, signal.SIGCONT)
            raise
    with pytest.raises(LockLost):
        async with holder as lease:
            primary.kill()
            os.kill(replica.pid, signal.SIGCONT)  # back, without the lock
            killed = time.monotonic()
            waiting = asyncio.create_task(acquired_at(waiter))
            try:
                await asyncio.sleep(2 * ttl)  # cancelled at the lease's deadline
            finally:
                ended = time.monotonic()
    acquired = await asyncio.wait_for(waiting, 60)
    print(
        f"the waiter held the lock {acquired - killed:.2f} s after the kill, the holder"
        f" lost it {ended - killed:.2f} s after: two holders for {ended - acquired:.2f} s;"
        f" fencing tokens {lease.fencing_token} then {waiter.fencing_token}"
    )
    # Two holders or not depends on who reaches the promoted replica first: the
    # waiter (then the holder's next extension finds the key taken) or the holder's
    # extension (then it finds the key gone). Either way the holder is told, by its
    # lease's deadline at the latest.
    assert ended - killed < ttl + 0.5
    # The counter's write was lost too, yet the tokens increase: they never fall
    # behind the server's clock.
    assert waiter.fencing_token > lease.fencing_token
    await waiter.release()
