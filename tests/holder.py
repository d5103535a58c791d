"""A worker process that takes a lock, says so on stdout, and then hangs until killed.

Usage: python holder.py URL NAME TTL [LIMIT]

With LIMIT: one permit of a Semaphore; with NAME = ``a,b``: a MultiLock.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as redis

from asynclock import MultiLock, Mutex, Semaphore
from asynclock._lock import LeaseLock


async def hold(url: str, name: str, ttl: float, limit: int | None) -> None:
    """Hold the lock (extending it) until the process is killed."""
    client = redis.Redis.from_url(url)
    lock: LeaseLock
    if "," in name:
        lock = MultiLock(client, name.split(","), ttl=ttl)
    elif limit is None:
        lock = Mutex(client, name, ttl=ttl)
    else:
        lock = Semaphore(client, name, limit=limit, ttl=ttl)
    async with lock:
        print("held", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(hold(sys.argv[1], sys.argv[2], float(sys.argv[3]), limit))
