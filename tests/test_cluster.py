"""Mutex on a real three-node Redis Cluster: a lock's keys share one slot."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster

from asynclock import MultiLock, Mutex, Semaphore
from asynclock._names import fence_key, owner_key
from asynclock._server import RedisServer, free_port

from .test_cli import cli, start_watch

pytestmark = pytest.mark.slow

SLOTS = 16384


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    """Three cluster-enabled servers on 127.0.0.1, slots split between them."""
    with ExitStack() as stack:
        nodes, buses = [], []
        for _ in range(3):
            server = RedisServer(args=("--cluster-enabled", "yes"))
            if server.version >= (7, 0):
                # An explicit bus port: the default (port + 10000) overflows for high
                # ports.
                buses.append(free_port())
                server.args += ("--cluster-port", str(buses[-1]))
            else:  # 6.2 has only the default: a port whose port + 10000 is free too
                server.port = port_with_free_bus()
                buses.append(server.port + 10000)
            nodes.append(stack.enter_context(server))
        clients = [stack.enter_context(redis.Redis(port=node.port)) for node in nodes]
        share = SLOTS // len(nodes)
        for n, client in enumerate(clients):
            last = SLOTS - 1 if n == len(nodes) - 1 else (n + 1) * share - 1
            # CLUSTER ADDSLOTSRANGE is 7.0's; ADDSLOTS with every slot works from 3.0.
            client.execute_command("CLUSTER", "ADDSLOTS", *range(n * share, last + 1))
        for node, bus in zip(nodes[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        deadline = time.monotonic() + 30
        while not all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.1)
        yield nodes[0].port


def port_with_free_bus() -> int:
    """A free port below 55536 on 127.0.0.1 whose cluster bus port (+10000) is free."""
    for _ in range(100):
        with socket.socket() as sock, socket.socket() as bus:
            port = random.randrange(20000, 55536)
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports (port, port + 10000) on 127.0.0.1")


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


async def test_multilock_and_semaphore_on_redis_cluster(cluster_port: int) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    try:
        with pytest.raises(ValueError, match="hash tag"):
            MultiLock(client, ["account:1", "account:2"])
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


async def test_the_command_line_watches_releases_on_a_cluster(cluster_port: int) -> None:
    url = f"redis://127.0.0.1:{cluster_port}/0"
    process = await start_watch(url, "--json", "--seconds", "20")
    assert process.stdout is not None
    holder_client = RedisCluster(host="127.0.0.1", port=cluster_port)
    waiter_client = None
    try:
        await holder_client.initialize()  # the slot map, read from the cluster
        names = [f"jobs:{n}" for n in range(12)]
        # A name whose slot is on another node than the one watch listens to.
        name = next(
            n for n in names
            if holder_client.get_node_from_key(owner_key("asynclock:", n)).port != cluster_port
        )  # fmt: skip
        holder = Mutex(holder_client, name, ttl=5)
        assert await holder.acquire()
        # Waiters of a cluster client poll today, so none stands in line and no release
        # is published. A plain client of the name's own node waits in line: its
        # wake-up is published on that node, and a cluster forwards it to every node.
        node = holder_client.get_node_from_key(owner_key("asynclock:", name))
        waiter_client = redis_asyncio.Redis(host="127.0.0.1", port=node.port)
        waiting = asyncio.create_task(Mutex(waiter_client, name, ttl=5).acquire(timeout=10))
        await asyncio.sleep(1.5)  # watch subscribed, the waiter in line
        await holder.release()
        assert await waiting
        event = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert (event["event"], event["name"]) == ("released", name)
    finally:
        process.kill()
        await process.wait()
        await holder_client.aclose()
        if waiter_client is not None:
            await waiter_client.aclose()
