"""How long asynclock takes to notice faults: ``python -m benchmarks.detection``.

Each scenario runs a few times against a private server (started here, on 127.0.0.1)
with a lease of ``--ttl`` seconds, and reports the median and the worst time, in
milliseconds, from the fault to the moment asynclock acts on it:

- ``key deleted``: the owner key deleted from outside, until the body is cancelled;
- ``server restarted``: the server killed and restarted empty, until the body is
  cancelled;
- ``server stalled``: writes paused (``CLIENT PAUSE``) for longer than the TTL; how
  long after the lease's deadline on the client's own clock the body is cancelled;
- ``holder killed``: a holding process SIGKILLed, until another process acquires.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

import redis.asyncio as aioredis

from asynclock import LockLost, Mutex
from asynclock._server import RedisServer

HOLDER = """
import asyncio, sys
import redis.asyncio as redis
from asynclock import Mutex
async def main():
    async with Mutex(redis.Redis.from_url(sys.argv[1]), "killed", ttl=float(sys.argv[2])):
        print("held", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


async def until_lost(lock: Mutex, fault: object) -> float:
    """Hold ``lock``, inject ``fault`` (an async callable); return seconds until the
    body was cancelled (``LockLost`` follows once the clean-up is done)."""
    started = stopped = 0.0
    try:
        async with lock:
            started = await fault()  # type: ignore[operator]
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped = time.monotonic()
                raise
    except LockLost:
        return stopped - started
    raise RuntimeError("the lock was not lost")


async def key_deleted(server: RedisServer, ttl: float) -> float:
    """The owner key deleted from outside."""
    client = aioredis.Redis.from_url(server.url)

    async def fault() -> float:
        await client.delete("asynclock:lock:{deleted}")
        return time.monotonic()

    try:
        return await until_lost(Mutex(client, "deleted", ttl=ttl), fault)
    finally:
        await client.aclose()


async def server_restarted(server: RedisServer, ttl: float) -> float:
    """The server killed and started again, empty, on the same port."""
    client = aioredis.Redis.from_url(server.url)

    async def fault() -> float:
        server.restart()
        return time.monotonic()

    try:
        return await until_lost(Mutex(client, "restarted", ttl=ttl), fault)
    finally:
        await client.aclose()


async def server_stalled(server: RedisServer, ttl: float) -> float:
    """Writes paused for longer than the TTL: measured from the last extension sent."""
    client = aioredis.Redis.from_url(server.url, socket_timeout=ttl / 4)
    admin = aioredis.Redis.from_url(server.url)
    lock = Mutex(client, "stalled", ttl=ttl)

    async def fault() -> float:
        await admin.client_pause(int(ttl * 3000), all=False)
        lease = lock.lease
        assert lease is not None
        return lease.deadline  # the loss is due here, on the client's own clock

    try:
        late = await until_lost(lock, fault)
        return late  # how late after the deadline the body was cancelled
    finally:
        await admin.client_unpause()
        await client.aclose()
        await admin.aclose()


async def holder_killed(server: RedisServer, ttl: float) -> float:
    """A holding process killed; measured until another process holds the lock."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, server.url, str(ttl), stdout=subprocess.PIPE
    )
    assert holder.stdout is not None
    await asyncio.wait_for(holder.stdout.readline(), 30)
    os.kill(holder.pid, signal.SIGKILL)
    killed = time.monotonic()
    await holder.wait()
    client = aioredis.Redis.from_url(server.url)
    try:
        async with Mutex(client, "killed", ttl=ttl, timeout=ttl * 5):
            return time.monotonic() - killed
    finally:
        await client.aclose()


SCENARIOS = {
    "key deleted": key_deleted,
    "server restarted": server_restarted,
    "server stalled (after the deadline)": server_stalled,
    "holder killed": holder_killed,
}


async def run(server: RedisServer, ttl: float, repeats: int) -> list[tuple[str, list[float]]]:
    """Run every scenario ``repeats`` times; return the times by scenario."""
    results = []
    for label, scenario in SCENARIOS.items():
        times = [await scenario(server, ttl) for _ in range(repeats)]
        print(f"{label}: {[round(t * 1000) for t in times]} ms", file=sys.stderr)
        results.append((label, times))
    return results


def main() -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection")
    parser.add_argument("--ttl", type=float, default=1.0, help="lease TTL in s (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per scenario (default 5)")
    args = parser.parse_args()
    with RedisServer() as server:
        results = asyncio.run(run(server, args.ttl, args.repeats))
    print(f"ttl {args.ttl:g} s, extend_interval {args.ttl / 3:.3g} s, {args.repeats} runs each")
    print("| fault | median ms | worst ms |\n|:---|---:|---:|")
    for label, times in results:
        print(f"| {label} | {statistics.median(times) * 1000:.0f} | {max(times) * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
