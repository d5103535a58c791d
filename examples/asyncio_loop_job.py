"""A job that every replica's plain asyncio loop fires each second; one replica runs it.

Start it on several replicas (or in several terminals) at once:

    REDIS_URL=redis://localhost:6379 python examples/asyncio_loop_job.py

Replicas' triggers never fire at exactly the same moment. The job takes 50 ms, so a
replica whose trigger fires 300 ms late would find the lock free and run the tick
again; ``hold_at_least=0.8`` keeps the lock for 0.8 s after it was taken, longer than
any skew between replicas and shorter than the period, so each tick runs once.

Settings, from the environment: ``REDIS_URL``; ``TICKS`` (default 5); ``OFFSET``, how
late this replica's trigger fires, in seconds (default 0); ``HOLD_AT_LEAST`` (default
0.8; 0 turns it off); ``START_AT``, the wall-clock time of tick 0 (default: the next
whole second). Each run is recorded in the Redis list ``example:runs`` as
``"<tick> <pid>"``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time

import redis.asyncio as redis

from asynclock import locked

URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
TICKS = int(os.environ.get("TICKS", "5"))
OFFSET = float(os.environ.get("OFFSET", "0"))
HOLD_AT_LEAST = float(os.environ.get("HOLD_AT_LEAST", "0.8")) or None
START_AT = float(os.environ.get("START_AT", "0")) or math.ceil(time.time())


class Reports:
    """The service: it owns its Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @locked(
        "example:daily-report", client="redis", skip_if_locked=True, hold_at_least=HOLD_AT_LEAST
    )
    async def send(self, tick: int) -> None:
        """Send the report of this tick: 50 ms of work."""
        await asyncio.sleep(0.05)
        await self.redis.rpush("example:runs", f"{tick} {os.getpid()}")
        print(f"tick {tick}: sent by {os.getpid()}", flush=True)


async def main() -> None:
    client = redis.Redis.from_url(URL)
    reports = Reports(client)
    for tick in range(TICKS):
        # The trigger: this replica's clock, START_AT + tick seconds, plus its skew.
        await asyncio.sleep(max(0.0, START_AT + tick + OFFSET - time.time()))
        if await reports.send(tick) is None:
            print(f"tick {tick}: skipped by {os.getpid()}", flush=True)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
