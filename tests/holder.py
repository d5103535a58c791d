"""A worker process that takes a lock, says so on stdout, and then hangs until killed.

Usage: python holder.py URL NAME TTL
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as redis

from asynclock import Mutex


async def hold(url: str, name: str, ttl: float) -> None:
    """Hold the lock (extending it) until the process is killed."""
    client = redis.Redis.from_url(url)
    async with Mutex(client, name, ttl=ttl):
        print("held", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], sys.argv[2], float(sys.argv[3])))
