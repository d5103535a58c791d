"""The primitives on a real three-node Redis Cluster: a lock's keys share one slot,
its releases are published to that slot's shard, and its waiters are woken from there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from asynclock import (
    Election,
    LinearBackoff,
    LockEvent,
    LockLost,
    MultiLock,
    Mutex,
    ReadWriteLock,
    Semaphore,
    SingleFlight,
    connect,
    locked,
    subscribe,
)
from asynclock._names import fence_key, owner_key
from asynclock._notify import ShardedNotifier, notifier_for
from asynclock._server import LocalCluster, find_server_binary, server_version

from .test_cli import cli, start_watch
from .test_processes import assert_each_name_held_alone, overlaps

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
SLOW_POLL = LinearBackoff(delay=5.0, jitter=0)  # polling alone would take 5 s

# Sharded pub/sub (SSUBSCRIBE, SPUBLISH) came with Redis 7.0: before, cluster clients poll.
SHARDED = server_version(find_server_binary()) >= (7, 0)
needs_sharded = pytest.mark.skipif(not SHARDED, reason="sharded pub/sub needs Redis 7.0+")


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    """Three cluster-enabled servers on 127.0.0.1, slots split between them."""
    with LocalCluster(primaries=3) as local:
        yield local.servers[0].port


@pytest.fixture
async def cluster(cluster_port: int) -> AsyncIterator[RedisCluster]:
    """A cluster client, its slot map read."""
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    await client.initialize()
    yield client
    await client.aclose()


def names_on_every_node(client: RedisCluster, count: int = 3) -> list[str]:
    """Names whose slots are on ``count`` different nodes, one per node."""
    by_node: dict[int, str] = {}
    for n in range(200):
        name = f"jobs:{n}"
        by_node.setdefault(client.get_node_from_key(owner_key("asynclock:", name)).port, name)
    assert len(by_node) >= count
    return list(by_node.values())[:count]


async def held_on_cluster(client: RedisCluster, name: str) -> None:
    """Wait until a lease on ``name`` is held (at most 10 s)."""
    deadline = time.monotonic() + 10
    while not await client.exists(owner_key("asynclock:", name)):
        assert time.monotonic() < deadline, f"nobody holds {name!r}"
        await asyncio.sleep(0.01)


async def followed_on_cluster(client: RedisCluster, name: str) -> None:
    """Wait until a caller follows flight ``name``: subscribed to its outcome on its
    node (at most 10 s), or, where nobody can subscribe, has had time to look."""
    if not SHARDED:
        await asyncio.sleep(0.5)
        return
    channel = f"asynclock:flight:{{{name}}}"
    node = client.get_node_from_key(channel)
    deadline = time.monotonic() + 10
    while not await subscribers(client, channel, node):
        assert time.monotonic() < deadline, f"nobody follows {name!r}"
        await asyncio.sleep(0.01)


async def subscribers(client: RedisCluster, channel: str, node: Any) -> int:
    """How many clients subscribe to sharded ``channel`` on ``node``."""
    reply = await client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    return int(reply[0][1])


async def test_mutex_on_redis_cluster(cluster_port: int) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    names = [f"jobs:{n}" for n in range(20)]  # spread over the three nodes
    try:
        for name in names:
            assert client.keyslot(owner_key("asynclock:", name)) == client.keyslot(
                fence_key("asynclock:", name)
            )
            async with Mutex(client, name, ttl=5) as lease:
                assert not await Mutex(client, name).acquire(blocking=False)
                assert await client.get(owner_key("asynclock:", name)) == lease.token.encode()
                await lease.extend()
            assert not await Mutex(client, name).locked()
        nodes = {client.get_node_from_key(owner_key("asynclock:", name)).port for name in names}
        assert len(nodes) == 3  # the names really were spread over every node
    finally:
        await client.aclose()


async def test_connect_to_a_cluster_url(cluster_port: int) -> None:
    async with await connect(f"redis+cluster://127.0.0.1:{cluster_port}") as backend:
        assert isinstance(backend.client, RedisCluster)
        names = names_on_every_node(backend.client)
        async with MultiLock(backend, names, ttl=5.0) as lease:
            assert len(lease.fencing_tokens) == 3
            for name in names:
                assert (
                    await backend.client.get(owner_key("asynclock:", name)) == lease.token.encode()
                )


async def test_multilock_and_semaphore_on_redis_cluster(cluster_port: int) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        names = ["{account:7}:debit", "{account:7}:credit"]
        async with MultiLock(client, names) as lease:
            assert set(lease.fencing_tokens) == set(names)
            assert not await Mutex(client, names[0]).acquire(blocking=False)
        async with Semaphore(client, "api:quota", limit=2):
            assert await Semaphore(client, "api:quota", limit=2).holders() == 1
    finally:
        await client.aclose()


async def test_the_command_line_inspects_every_primary(cluster_port: int) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    names = [f"jobs:{n}" for n in range(12)]
    try:
        locks = [Mutex(client, name, ttl=30) for name in names]
        for lock in locks:
            assert await lock.acquire()
        nodes = {client.get_node_from_key(owner_key("asynclock:", name)).port for name in names}
        assert len(nodes) == 3
        status, out, _ = await cli(f"redis://127.0.0.1:{cluster_port}/0", "inspect", "--json")
        assert status == 0
        assert sorted(state["name"] for state in json.loads(out)) == sorted(names)
        status, out, _ = await cli(
            f"redis://127.0.0.1:{cluster_port}/0", "release", "jobs:3", "--force", "--yes"
        )
        assert status == 0
        assert not await client.exists(owner_key("asynclock:", "jobs:3"))
        for lock in locks:
            if lock.name != "jobs:3":
                await lock.release()
    finally:
        await client.aclose()


async def test_the_command_line_watches_a_cluster_through_every_primary(
    cluster: RedisCluster, cluster_port: int
) -> None:
    url = f"redis://127.0.0.1:{cluster_port}/0"
    # Releases are published on their name's shard: only keyspace events show them.
    status, _, err = await cli(url, "watch", "--seconds", "1")
    assert status == 2
    assert "keyspace notifications on every primary" in err
    primaries = cluster.get_primaries()
    for node in primaries:
        await cluster.config_set("notify-keyspace-events", "K$gx", target_nodes=node)
    process = await start_watch(url, "--json", "--seconds", "20")
    assert process.stdout is not None
    try:
        await asyncio.sleep(1.5)  # subscribed on every primary
        for name in names_on_every_node(cluster):
            async with Mutex(cluster, name, ttl=5):
                pass
            for expected in ("acquired", "released"):
                event = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
                assert (event["event"], event["name"]) == (expected, name)
    finally:
        process.kill()
        await process.wait()
        for node in primaries:
            await cluster.config_set("notify-keyspace-events", "", target_nodes=node)


@needs_sharded
async def test_a_release_on_a_cluster_wakes_a_waiter_of_another_client_at_once(
    cluster: RedisCluster, cluster_port: int
) -> None:
    # The waiter's client is another process's, as far as the cluster can tell.
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        for name in names_on_every_node(cluster):
            holder = Mutex(cluster, name, ttl=30)
            assert await holder.acquire()
            second = Mutex(other, name, ttl=30, retry=SLOW_POLL)
            waiter = asyncio.create_task(second.acquire())
            await asyncio.sleep(0.3)  # refused, in line and subscribed on the name's node
            assert not waiter.done()
            released = time.monotonic()
            await holder.release()
            assert await asyncio.wait_for(waiter, 3)
            assert time.monotonic() - released < 0.5  # a notification, not a 5 s poll
            await second.release()
        assert isinstance(notifier_for(other), ShardedNotifier)
    finally:
        await other.aclose()


async def test_read_write_locks_on_every_node_share_reads_and_wake_a_waiting_writer(
    cluster: RedisCluster, cluster_port: int
) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        for name in names_on_every_node(cluster):
            rw, elsewhere = ReadWriteLock(cluster, name, ttl=5), ReadWriteLock(other, name, ttl=5)
            async with rw.read(), elsewhere.read() as read:
                assert await rw.readers() == 2
                writing = asyncio.create_task(elsewhere.write().acquire())
                await asyncio.sleep(0.2)
                assert not writing.done()
                if SHARDED:  # a waiter that polls (before Redis 7.0) takes no place in line
                    late = ReadWriteLock(cluster, name).read()
                    assert not await late.acquire(blocking=False)  # a writer waits
            released = time.monotonic()
            assert await asyncio.wait_for(writing, 5)
            if SHARDED:
                assert time.monotonic() - released < 0.5  # a notification
            write = elsewhere.write().lease
            assert write is not None
            assert write.fencing_token > read.fencing_token
            await elsewhere.write().release()
    finally:
        await other.aclose()


async def test_single_flights_on_every_node_run_once_and_wake_their_followers(
    cluster: RedisCluster, cluster_port: int
) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    await other.initialize()
    try:
        for name in names_on_every_node(cluster):
            runs = 0
            go = asyncio.Event()

            async def job(go: asyncio.Event = go) -> int:
                nonlocal runs
                runs += 1
                await go.wait()
                return runs

            leading = asyncio.create_task(SingleFlight(cluster, name).run(job))
            await held_on_cluster(cluster, name)
            following = asyncio.gather(*(SingleFlight(other, name).run(job) for _ in range(8)))
            # The job ends once the followers wait for it (subscribed, where they can).
            await followed_on_cluster(cluster, name)
            landed = time.monotonic()
            go.set()
            values = await asyncio.wait_for(following, 10)
            waited = time.monotonic() - landed
            print(f"{name}: the followers had the value {waited * 1000:.0f} ms after it landed")
            assert (await leading, values, runs) == (1, [1] * 8, 1)
            # Woken by the landing's sharded message (polling: every 50 ms).
            assert waited < (0.5 if SHARDED else 1.0)

            async def cancelled_leader() -> None:
                await asyncio.sleep(30)

            stuck = asyncio.create_task(SingleFlight(cluster, name, ttl=30).run(cancelled_leader))
            await asyncio.sleep(0.1)
            follower = asyncio.create_task(SingleFlight(other, name).run(job))
            await asyncio.sleep(0.1)
            stuck.cancel()
            assert await asyncio.wait_for(follower, 5) == 2  # led at once, not after 30 s
    finally:
        await other.aclose()


@needs_sharded
async def test_a_released_permit_on_a_cluster_wakes_a_semaphore_waiter(
    cluster: RedisCluster, cluster_port: int
) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        holder = Semaphore(cluster, "quota", limit=1, ttl=30)
        assert await holder.acquire()
        waiter = asyncio.create_task(
            Semaphore(other, "quota", limit=1, ttl=30, retry=SLOW_POLL).acquire()
        )
        await asyncio.sleep(0.3)
        released = time.monotonic()
        await holder.release()
        assert await asyncio.wait_for(waiter, 3)
        assert time.monotonic() - released < 0.5
    finally:
        await other.aclose()


@needs_sharded
async def test_a_cluster_client_hands_over_inside_its_process(cluster: RedisCluster) -> None:
    events: list[LockEvent] = []
    stop = subscribe(events.append)
    sections: list[tuple[float, float]] = []

    async def one() -> None:
        for _ in range(5):
            async with Mutex(cluster, "reports", ttl=10, retry=SLOW_POLL, timeout=30):
                start = time.monotonic()
                await asyncio.sleep(0.001)
                sections.append((start, time.monotonic()))

    try:
        began = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(8))), 30)
        elapsed = time.monotonic() - began
    finally:
        stop()
    records = [{"start": start, "end": end} for start, end in sections]
    assert len(records) == 40
    assert overlaps(records) == []
    acquired = [e for e in events if e.event == "lock_acquired" and e.lock == "reports"]
    assert sum(e.handed_over for e in acquired) >= 20  # most went straight to the next
    assert elapsed < 5  # never a 5 s poll


@needs_sharded
async def test_channels_of_a_cluster_are_subscribed_on_their_own_node_only(
    cluster: RedisCluster, cluster_port: int
) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    names = names_on_every_node(cluster)
    holders = [Mutex(cluster, name, ttl=30) for name in names]
    try:
        for holder in holders:
            assert await holder.acquire()
        waiters = [
            asyncio.create_task(Mutex(other, name, retry=SLOW_POLL).acquire(timeout=20))
            for name in names
        ]
        await asyncio.sleep(0.5)
        for name in names:
            node = cluster.get_node_from_key(owner_key("asynclock:", name))
            channels = await cluster.execute_command(
                "PUBSUB", "SHARDCHANNELS", "asynclock:*", target_nodes=node
            )
            ours = {owner_key("asynclock:", n) for n in names} & {c.decode() for c in channels}
            assert ours == {owner_key("asynclock:", name)}
        for holder in holders:
            await holder.release()
        assert all(await asyncio.wait_for(asyncio.gather(*waiters), 5))
    finally:
        await other.aclose()


@needs_sharded
async def test_a_channel_followed_to_its_node_takes_along_only_the_waiters_still_there(
    cluster: RedisCluster,
) -> None:
    notifier = notifier_for(cluster)
    assert isinstance(notifier, ShardedNotifier)
    stayed, left = asyncio.Event(), asyncio.Event()
    channel = owner_key("asynclock:", "followed")
    await notifier.watch((channel,), stayed)
    await notifier.watch((channel,), left)
    notifier.unwatch((channel,), left)  # its waiter is gone before the move is followed
    # As a node's unasked SUNSUBSCRIBE does (its slot moved): follow both events.
    await notifier._rewatch(channel, {stayed, left})
    watching = {
        event for node in notifier._nodes.values() for event in node._events.get(channel, ())
    }
    assert watching == {stayed}
    notifier.unwatch((channel,), stayed)
    assert not any(node._events.get(channel) for node in notifier._nodes.values())
    # Still woken by a release there.
    await notifier.watch((channel,), stayed)
    await cluster.execute_command("SPUBLISH", channel, "")  # addressed to every waiter
    await asyncio.wait_for(stayed.wait(), 5)
    notifier.unwatch((channel,), stayed)


@needs_sharded
def test_processes_on_a_cluster_never_overlap_and_are_woken_by_notification(
    cluster_port: int, tmp_path: Path
) -> None:
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(3)]
    url = f"cluster+redis://127.0.0.1:{cluster_port}/0"
    command = [sys.executable, str(HERE / "contender.py"), url, "procs"]
    workers = [subprocess.Popen([*command, "4", "15", str(out)]) for out in outputs]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    assert len(records) == 3 * 4 * 15
    assert overlaps(records) == []
    fences = [record["fence"] for record in sorted(records, key=lambda r: r["start"])]
    assert fences == sorted(set(fences))


async def test_a_cluster_waiter_gets_a_released_lock_on_any_server_version(
    cluster: RedisCluster, cluster_port: int
) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        holder = Mutex(cluster, "nightly", ttl=30)
        assert await holder.acquire()
        waiter = asyncio.create_task(Mutex(other, "nightly", ttl=30).acquire(timeout=10))
        await asyncio.sleep(1.5)  # a server without sharded pub/sub has refused by now
        await holder.release()
        assert await asyncio.wait_for(waiter, 5)
        # Before Redis 7.0 the server refuses SSUBSCRIBE, and the client's waiters poll.
        notifier = notifier_for(other)
        if SHARDED:
            assert isinstance(notifier, ShardedNotifier)
        else:
            assert notifier is None
    finally:
        await other.aclose()


async def test_a_multilock_across_slots_holds_every_name_with_a_token_each(
    cluster: RedisCluster,
) -> None:
    names = names_on_every_node(cluster)
    lock = MultiLock(cluster, list(reversed(names)), ttl=5)
    async with lock as lease:
        assert set(lease.fencing_tokens) == set(names)
        assert lock.names == tuple(reversed(names))  # as given
        for name in names:
            assert await cluster.get(owner_key("asynclock:", name)) == lease.token.encode()
            assert not await Mutex(cluster, name).acquire(blocking=False)
        await lease.extend()
    for name in names:
        assert not await cluster.exists(owner_key("asynclock:", name))


async def test_a_multilock_refused_by_a_later_slot_gives_back_the_earlier_ones(
    cluster: RedisCluster,
) -> None:
    names = names_on_every_node(cluster)
    ordered = sorted(names, key=lambda name: cluster.keyslot(owner_key("asynclock:", name)))
    last = Mutex(cluster, ordered[-1], ttl=30)
    assert await last.acquire()
    lock = MultiLock(cluster, names, ttl=30)
    assert not await lock.acquire(blocking=False)
    for name in ordered[:-1]:  # taken, then given back
        assert not await cluster.exists(owner_key("asynclock:", name))
    # A blocking acquire keeps its token from try to try: giving back leaves no
    # tombstone that would refuse its next try.
    waiting = asyncio.create_task(lock.acquire(timeout=10))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    assert not await Mutex(cluster, ordered[0]).locked()  # nothing held while it waits
    await last.release()
    assert await asyncio.wait_for(waiting, 5)
    assert set(lock.fencing_tokens) == set(names)
    await lock.release()


async def test_a_multilock_across_slots_is_lost_when_one_slot_is(cluster: RedisCluster) -> None:
    names = names_on_every_node(cluster)
    lock = MultiLock(cluster, names, ttl=1.5)
    with pytest.raises(LockLost):
        async with lock:
            await asyncio.sleep(1.2)  # extended on every node meanwhile
            for name in names:
                assert await cluster.pttl(owner_key("asynclock:", name)) > 500
            await cluster.delete(owner_key("asynclock:", names[1]))
            await asyncio.sleep(3)  # cancelled by the loss at the next extension
    for name in names:
        assert not await cluster.exists(owner_key("asynclock:", name))


def test_multilocks_across_slots_and_processes_never_overlap_on_any_name(
    cluster_port: int, tmp_path: Path
) -> None:
    names = ["m1", "m2", "m3", "m4", "m5"]  # over several slots and nodes
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(3)]
    url = f"cluster+redis://127.0.0.1:{cluster_port}/0"
    command = [sys.executable, str(HERE / "contender.py"), url, ",".join(names)]
    workers = [subprocess.Popen([*command, "5", "10", str(out)]) for out in outputs]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    assert len(records) == 3 * 5 * 10
    assert_each_name_held_alone(records, names)


async def test_a_decorated_function_runs_once_at_a_time_on_a_cluster(
    cluster: RedisCluster,
) -> None:
    running: dict[int, int] = {}
    most: dict[int, int] = {}

    @locked("report:{n}", client=cluster, ttl=5, timeout=20)
    async def report(n: int) -> int:
        running[n] = running.get(n, 0) + 1
        most[n] = max(most.get(n, 0), running[n])
        await asyncio.sleep(0.01)
        running[n] -= 1
        return n

    slots = {cluster.keyslot(owner_key("asynclock:", f"report:{n}")) for n in range(3)}
    assert len(slots) == 3  # three names, three slots
    results = await asyncio.gather(*(report(n % 3) for n in range(12)))
    assert sorted(results) == sorted(n % 3 for n in range(12))
    assert most == {0: 1, 1: 1, 2: 1}  # one call per name at a time


async def test_an_election_on_a_cluster(cluster: RedisCluster, cluster_port: int) -> None:
    other = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        first = Election(cluster, "scheduler", identity="first", ttl=5)
        second = Election(other, "scheduler", identity="second", ttl=5)
        seen: list[str | None] = []

        async def observe() -> None:
            async for info in Election(cluster, "scheduler").watch(interval=0.05):
                seen.append(None if info is None else info.identity)

        watching = asyncio.create_task(observe())
        await asyncio.sleep(0.2)  # nobody leads yet
        async with first as term:
            info = await second.leader()
            assert info is not None
            assert (info.identity, info.term) == ("first", term.fencing_token)
            campaign = asyncio.create_task(second.__aenter__())
            await asyncio.sleep(0.3)
            assert not campaign.done()
        resigned = time.monotonic()
        later = await asyncio.wait_for(campaign, 5)
        took = time.monotonic() - resigned
        assert later.fencing_token > term.fencing_token
        await asyncio.sleep(0.2)
        await second.resign()  # its term began in the campaign's task
        await asyncio.sleep(0.2)
        watching.cancel()
        changes = [identity for identity, _ in itertools.groupby(seen)]
        # Between the two terms, nobody may lead for a read or two (polling campaigners).
        assert [identity for identity in changes if identity is not None] == ["first", "second"]
        assert changes[0] is None
        assert changes[-1] is None
        if SHARDED:
            assert took < 0.5  # woken by the step-down's notification
    finally:
        await other.aclose()
