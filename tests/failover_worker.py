"""A worker process for the repeated-failover tests: contend for one name on a Redis
Cluster until told to stop, through whatever the cluster goes through.

Usage: python failover_worker.py CLUSTER_URL NAME COROUTINES REPLICAS OUT_PATH

Each coroutine enters ``Mutex(NAME, ttl=TTL, replicas=REPLICAS)`` again and again until
standard input is closed (at most ``LONGEST`` seconds), and records every section it entered:
start and end on ``time.monotonic()`` (one clock for every process on the machine), its
fencing token, and whether the lease was lost (the end is when the body stopped: a loss
cancels it there, before the lease's keys are given back). Failed tries are
counted by kind. The records and the counts go to OUT_PATH as JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import Any

from redis.asyncio.cluster import RedisCluster

from asynclock import LockBackendError, LockLost, LockNotAcquired, Mutex

TTL = 3.0
LONGEST = 120.0


async def contend(url: str, name: str, coroutines: int, replicas: int) -> dict[str, Any]:
    """Run the coroutines until standard input is closed; return their records and
    counts."""
    client = RedisCluster.from_url(url)
    records: list[dict[str, Any]] = []
    failures: Counter[str] = Counter()
    give_up = time.monotonic() + LONGEST
    stop = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))

    async def one() -> None:
        while not stop.done() and time.monotonic() < give_up:
            lock = Mutex(client, name, ttl=TTL, timeout=20, replicas=replicas, replica_timeout=0.5)
            start = None
            try:
                async with lock as lease:
                    start = time.monotonic()
                    try:
                        # Mostly short sections, now and then one across an extension.
                        await asyncio.sleep(random.choice([0.002, 0.005, 0.01, 0.02] * 3 + [1.2]))
                    finally:
                        end = time.monotonic()  # the body's end: a loss cancels it here
                lost = False
            except LockLost:
                lost = True
            except (LockBackendError, LockNotAcquired) as exc:
                failures[type(exc).__name__] += 1
                if start is None:  # refused or failed before the body
                    await asyncio.sleep(0.1)
                    continue
                lost = False  # the release failed: still a section
            assert start is not None
            records.append({"start": start, "end": end, "fence": lease.fencing_token, "lost": lost})

    await asyncio.gather(*(one() for _ in range(coroutines)))
    await client.aclose()
    return {"records": records, "failures": failures}


if __name__ == "__main__":
    url, name, coroutines, replicas, out = sys.argv[1:6]
    outcome = asyncio.run(contend(url, name, int(coroutines), int(replicas)))
    with open(out, "w") as file:
        json.dump(outcome, file)
