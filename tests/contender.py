"""A worker process for the multi-process tests: contend for one lock, record sections.

Usage: python contender.py URL NAME COROUTINES SECTIONS OUT_PATH [LIMIT]

Each coroutine enters ``Mutex(NAME)`` (or ``Semaphore(NAME, limit=LIMIT)``) SECTIONS
times and records, per section, the start and end on ``time.monotonic()`` (one clock
for every process on the machine) and the fencing token; the records go to OUT_PATH
as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio as redis

from asynclock import Mutex, Semaphore
from asynclock._lease import LeaseLock


async def contend(
    url: str, name: str, coroutines: int, sections: int, limit: int | None
) -> list[dict[str, float]]:
    """Run the coroutines and return their records."""
    client = redis.Redis.from_url(url)
    records: list[dict[str, float]] = []

    async def one() -> None:
        for _ in range(sections):
            lock: LeaseLock = (
                Mutex(client, name, ttl=5, timeout=60)
                if limit is None
                else Semaphore(client, name, limit=limit, ttl=5, timeout=60)
            )
            async with lock as lease:
                start = time.monotonic()
                await asyncio.sleep(random.uniform(0, 0.002))
                end = time.monotonic()
            records.append({"start": start, "end": end, "fence": lease.fencing_token})

    await asyncio.gather(*(one() for _ in range(coroutines)))
    await client.aclose()
    return records


if __name__ == "__main__":
    url, name, coroutines, sections, out = sys.argv[1:6]
    limit = int(sys.argv[6]) if len(sys.argv) > 6 else None
    records = asyncio.run(contend(url, name, int(coroutines), int(sections), limit))
    with open(out, "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
