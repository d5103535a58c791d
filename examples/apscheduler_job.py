"""The same once-per-tick job, fired by APScheduler's asyncio scheduler on every replica.

    pip install 'apscheduler>=3.10,<4'
    REDIS_URL=redis://localhost:6379 python examples/apscheduler_job.py

APScheduler fires ``send_report`` every second on each replica; ``@locked`` with
``skip_if_locked=True`` lets one replica run each tick, and ``hold_at_least=0.8`` keeps
a replica whose trigger fires a little later from running the same tick again.

Settings, from the environment, as in ``asyncio_loop_job.py``: ``REDIS_URL``,
``TICKS``, ``OFFSET``, ``HOLD_AT_LEAST``, ``START_AT``. Runs are recorded in the
Redis list ``example:runs`` as ``"<tick> <pid>"``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from asynclock import locked

URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
TICKS = int(os.environ.get("TICKS", "5"))
OFFSET = float(os.environ.get("OFFSET", "0"))
HOLD_AT_LEAST = float(os.environ.get("HOLD_AT_LEAST", "0.8")) or None
START_AT = float(os.environ.get("START_AT", "0")) or math.ceil(time.time())

client = redis.Redis.from_url(URL)


@locked("example:daily-report", client=client, skip_if_locked=True, hold_at_least=HOLD_AT_LEAST)
async def send_report() -> None:
    """Send the report of the current tick: 50 ms of work."""
    tick = int(time.time() - START_AT)
    await asyncio.sleep(0.05)
    await client.rpush("example:runs", f"{tick} {os.getpid()}")
    print(f"tick {tick}: sent by {os.getpid()}", flush=True)


async def main() -> None:
    scheduler = AsyncIOScheduler()
    first = datetime.fromtimestamp(START_AT + OFFSET, tz=UTC)
    scheduler.add_job(
        send_report,
        "interval",
        seconds=1,
        start_date=first,
        end_date=first + timedelta(seconds=TICKS - 0.5),
        misfire_grace_time=None,
    )
    scheduler.start()
    await asyncio.sleep(max(0.0, START_AT + OFFSET + TICKS - time.time()))
    scheduler.shutdown(wait=False)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
