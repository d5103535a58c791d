"""A worker process for the multi-process tests: contend for one lock, record sections.

Usage: python contender.py URL NAME COROUTINES SECTIONS OUT_PATH

Each coroutine enters ``Mutex(NAME)`` SECTIONS times and records, per section, the
start and end on ``time.monotonic()`` (one clock for every process on the machine)
and the fencing token; the records go to OUT_PATH as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio as redis

from asynclock import Mutex


async def contend(url: str, name: str, coroutines: int, sections: int) -> list[dict[str, float]]:
    """Run the coroutines and return their records."""
    client = redis.Redis.from_url(url)
    records: list[dict[str, float]] = []

    async def one() -> None:
        for _ in range(sections):
            async with Mutex(client, name, ttl=5, timeout=60) as lease:
                start = time.monotonic()
                await asyncio.sleep(random.uniform(0, 0.002))
                end = time.monotonic()
            records.append({"start": start, "end": end, "fence": lease.fencing_token})

    await asyncio.gather(*(one() for _ in range(coroutines)))
    await client.aclose()
    return records


if __name__ == "__main__":
    url, name, coroutines, sections, out = sys.argv[1:6]
    records = asyncio.run(contend(url, name, int(coroutines), int(sections)))
    with open(out, "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
