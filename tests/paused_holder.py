"""A holder that the test freezes with SIGSTOP while it holds the lock.

Usage: python paused_holder.py URL NAME TTL

It prints ``held <fencing token>``, then runs a synchronous step of 0.5 s (the test
stops it meanwhile, for longer than the TTL). When it resumes it writes to the fenced
storage at once, before its event loop runs again, as a write already under way when
a process froze would, and prints
``write accepted`` or ``write rejected``; then it goes on awaiting, and prints
``lost: <reason>`` when asynclock tells it the lock is gone.
"""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as redis
from fenced_storage import FencedStorage  # type: ignore[import-not-found]

from asynclock import LockLost, Mutex


async def hold(url: str, name: str, ttl: float) -> None:
    """Hold the lock across the freeze, then report what happened."""
    client = redis.Redis.from_url(url)
    storage = FencedStorage(url, name)
    try:
        async with Mutex(client, name, ttl=ttl) as lease:
            print(f"held {lease.fencing_token}", flush=True)
            time.sleep(0.5)  # noqa: ASYNC251  (a synchronous step: the freeze lands in it)
            accepted = storage.write("from the frozen holder", lease.fencing_token)
            print("write accepted" if accepted else "write rejected", flush=True)
            await asyncio.sleep(30)
    except LockLost as loss:
        print(f"lost: {loss.reason}", flush=True)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], sys.argv[2], float(sys.argv[3])))
