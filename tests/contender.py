"""A worker process for the multi-process tests: contend for one lock, record sections.

Usage: python contender.py URL NAME COROUTINES SECTIONS OUT_PATH [LIMIT]

A URL starting with ``cluster+`` (``cluster+redis://127.0.0.1:7000/0``) is a Redis
Cluster's, used through ``RedisCluster``; a ``postgresql://`` URL a PostgreSQL
server's, through ``connect``.

Each coroutine enters ``Mutex(NAME)`` (or ``Semaphore(NAME, limit=LIMIT)``, or with
``NAME`` = ``a,b,c,...`` a ``MultiLock`` over two of those names at random) SECTIONS
times and records, per section, the start and end on ``time.monotonic()`` (one clock
for every process on the machine) and the fencing tokens by name; the records go to
OUT_PATH as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from asynclock import MultiLock, Mutex, Semaphore, connect
from asynclock._lock import LeaseLock


async def contend(
    url: str, name: str, coroutines: int, sections: int, limit: int | None
) -> list[dict[str, Any]]:
    """Run the coroutines and return their records."""
    client: Any
    if url.startswith("cluster+"):
        client = RedisCluster.from_url(url.removeprefix("cluster+"))
    elif url.startswith("postgresql://"):
        client = await connect(url)
    else:
        client = redis.Redis.from_url(url)
    records: list[dict[str, Any]] = []

    async def one() -> None:
        for _ in range(sections):
            lock: LeaseLock
            if "," in name:
                lock = MultiLock(client, random.sample(name.split(","), 2), ttl=5, timeout=60)
            elif limit is None:
                lock = Mutex(client, name, ttl=5, timeout=60)
            else:
                lock = Semaphore(client, name, limit=limit, ttl=5, timeout=60)
            async with lock as lease:
                start = time.monotonic()
                await asyncio.sleep(random.uniform(0, 0.002))
                end = time.monotonic()
            records.append(
                {
                    "start": start,
                    "end": end,
                    "fence": lease.fencing_token,
                    "fences": lease.fencing_tokens,
                }
            )

    await asyncio.gather(*(one() for _ in range(coroutines)))
    await client.aclose()
    return records


if __name__ == "__main__":
    url, name, coroutines, sections, out = sys.argv[1:6]
    limit = int(sys.argv[6]) if len(sys.argv) > 6 else None
    records = asyncio.run(contend(url, name, int(coroutines), int(sections), limit))
    with open(out, "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
