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
import contextlib
import itertools
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from asynclock import LockBackendError, LockLost, LockNotAcquired, MultiLock, Mutex
from asynclock._names import owner_key
from asynclock._server import LocalCluster, RedisServer

from .failover_worker import TTL
from .test_processes import assert_each_name_held_alone, overlaps

pytestmark = pytest.mark.slow

NODE_TIMEOUT_MS = 1000
HERE = Path(__file__).parent


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


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def replicating(replica_port: int, primary_port: int) -> bool:
    """Whether the server at ``replica_port`` is a replica of ``primary_port``, in sync."""
    try:
        with redis.Redis(port=replica_port, socket_timeout=1) as node:
            info = node.info("replication")
    except redis.RedisError:
        return False
    return (
        info["role"] == "slave"
        and int(info["master_port"]) == primary_port
        and info["master_link_status"] == "up"
        and not info.get("master_sync_in_progress", 0)
    )


def cluster_ok(port: int) -> bool:
    """Whether the node at ``port`` sees every slot served."""
    with redis.Redis(port=port, socket_timeout=1) as node:
        return bool(node.cluster("INFO")["cluster_state"] == "ok")


FAILOVERS = 3


async def fail_over(doomed: RedisServer, heir: RedisServer) -> float:
    """SIGKILL ``doomed``, wait until its replica ``heir`` serves its slots, start it
    again (it rejoins as ``heir``'s replica) and wait until it is in sync; return when
    it was killed."""
    await asyncio.to_thread(doomed.kill)
    killed = time.monotonic()
    await asyncio.to_thread(
        wait_until, lambda: promoted(heir.port) and cluster_ok(heir.port), "no promotion"
    )
    await asyncio.to_thread(doomed.start)
    await asyncio.to_thread(wait_until, lambda: replicating(doomed.port, heir.port), "no resync")
    return killed


async def contend_through_failovers(
    cluster: LocalCluster, tmp_path: Path, name: str, replicas: int
) -> tuple[list[dict[str, Any]], Counter[str], list[float]]:
    """Three processes contend on ``name`` while its primary is SIGKILLed ``FAILOVERS``
    times, each time under a holder of this process (its replica promoted, the killed
    node started again as the new primary's replica); return every section, the failed
    tries, and when each kill happened."""
    client = RedisCluster.from_url(cluster.url)
    await client.initialize()
    index = [server.port for server in cluster.servers].index(primary_of(client, name))
    pair = [cluster.servers[index], cluster.replicas[index][0]]
    outputs = [tmp_path / f"worker-{n}.json" for n in range(3)]
    command = [sys.executable, str(HERE / "failover_worker.py"), cluster.url, name, "3"]
    workers = [
        await asyncio.create_subprocess_exec(
            *command, str(replicas), str(out), stdin=subprocess.PIPE
        )
        for out in outputs
    ]
    records: list[dict[str, Any]] = []
    kills = []
    try:
        await asyncio.sleep(2)  # contention under way
        for round_ in range(FAILOVERS):
            doomed, heir = pair[round_ % 2], pair[1 - round_ % 2]
            lock = Mutex(client, name, ttl=TTL, timeout=10, replicas=replicas, replica_timeout=0.5)
            failover = None
            start = lost = None
            try:
                async with lock as lease:
                    start, lost = time.monotonic(), False
                    failover = asyncio.create_task(fail_over(doomed, heir))
                    try:
                        await asyncio.sleep(TTL + 1)  # past the lease, unless extended
                    finally:
                        end = time.monotonic()  # the body's end: a loss cancels it here
            except LockLost:
                lost = True
            except LockBackendError:
                assert start is not None  # the release failed, after the section
            except LockNotAcquired:
                # The contenders kept the lock from us (their line is not ours to
                # join fairly): one of them holds it at the kill instead.
                failover = asyncio.create_task(fail_over(doomed, heir))
            if start is not None:
                records.append(
                    {
                        "start": start,
                        "end": end,
                        "fence": lease.fencing_token,
                        "lost": lost,
                    }
                )
            assert failover is not None
            kills.append(await failover)
            await asyncio.sleep(2)  # contention on the new primary, with a replica again
    finally:
        await client.aclose()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in workers:
            assert await asyncio.wait_for(worker.wait(), 120) == 0
    failures = Counter[str]()
    for out in outputs:
        outcome = json.loads(out.read_text())
        records += outcome["records"]
        failures.update(outcome["failures"])
    return records, failures, kills


def summary(records: list[dict[str, Any]], failures: Counter[str], kills: list[float]) -> str:
    """A line on what the contenders saw."""
    lost = [r for r in records if r["lost"]]
    after = [min(r["end"] - k for k in kills if k <= r["end"]) for r in lost]
    return (
        f"{len(records)} sections, {len(lost)} lost"
        + (f" ({', '.join(f'{a:.2f}' for a in after)} s after a kill)" if lost else "")
        + f", failed tries {dict(failures)}, overlaps {len(overlaps(records))}"
        + "".join(f" ({a['end'] - b['start']:.3f} s)" for a, b in overlaps(records))
    )


async def test_with_replicas_repeated_failovers_never_let_two_holders_in(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    records, failures, kills = await contend_through_failovers(cluster, tmp_path, "jobs:fo", 1)
    print(summary(records, failures, kills))
    assert_each_name_held_alone([{**r, "fences": {"n": r["fence"]}} for r in records], ["n"])
    for kill, then in itertools.pairwise([*kills, math.inf]):
        # Each new primary, once it had a replica again, handed the lock out.
        assert any(kill < record["start"] < then for record in records)
    for record in records:
        if record["lost"]:  # within the lease's TTL of the kill that cost it
            assert any(0 <= record["end"] - kill < TTL + 0.5 for kill in kills)


async def test_without_replicas_repeated_failovers_are_measured(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    records, failures, kills = await contend_through_failovers(cluster, tmp_path, "jobs:fo0", 0)
    print(summary(records, failures, kills))
    for first, second in overlaps(records):
        # Two holders only across a failover: the first entered before a kill, the
        # second on the promoted replica after it.
        assert any(first["start"] < kill <= second["start"] for kill in kills)
    for record in records:
        if record["lost"]:
            assert any(0 <= record["end"] - kill < TTL + 0.5 for kill in kills)
    # Tokens increase across failovers too, a lost counter write included: they never
    # fall behind the server's clock.
    fences = [r["fence"] for r in sorted(records, key=lambda r: r["start"])]
    assert fences == sorted(set(fences))
    for kill, then in itertools.pairwise([*kills, math.inf]):
        assert any(kill < record["start"] < then for record in records)


async def test_a_multilock_riding_out_a_failover_holds_no_slot_while_it_waits(
    cluster: LocalCluster,
) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        await client.initialize()
        ports = [server.port for server in cluster.servers]
        names: dict[int, str] = {}  # by the index of the primary that serves it
        for n in range(200):
            names.setdefault(ports.index(primary_of(client, f"ride:{n}")), f"ride:{n}")
        first, later = names[0], names[2]  # slots in that order: taken in that order
        primary, (replica,) = cluster.servers[2], cluster.replicas[2]
        primary.kill()
        lock = MultiLock(client, [later, first], ttl=5)
        acquiring = asyncio.create_task(lock.acquire(timeout=30))
        held_meanwhile = []
        with redis.Redis(port=ports[0]) as node:
            while not promoted(replica.port):  # the later group's slot has no primary
                # Once the failure is known to all, no slot is served until promoted.
                with contextlib.suppress(redis.exceptions.ResponseError):  # CLUSTERDOWN
                    held_meanwhile.append(bool(node.exists(owner_key("asynclock:", first))))
                await asyncio.sleep(0.05)
        assert await asyncio.wait_for(acquiring, 30)  # rode it out
        assert set(lock.fencing_tokens) == {first, later}
        await lock.release()
        print(f"the first name held in {sum(held_meanwhile)} of {len(held_meanwhile)} samples")
        # Each failed try gave back what it took: held for moments, never throughout.
        assert len(held_meanwhile) >= 5
        assert sum(held_meanwhile) <= len(held_meanwhile) // 2
    finally:
        await client.aclose()
