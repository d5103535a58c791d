"""A worker process for the read-write lock tests.

Usage: python rwlock_worker.py URL NAME SECONDS ROLE OUT_PATH

ROLE is one of:
- ``mix``: four coroutines enter the lock for SECONDS, each time reading (4 in 5) or
  writing, holding it 1 to 20 ms;
- ``readers``: four coroutines read back to back for SECONDS, each holding it 50 to
  100 ms, so that some reader always holds it: without write preference no writer
  would ever get in;
- ``writer``: after a second (the readers under way), one coroutine writes once every
  half second for SECONDS, recording how long each write waited.

Every section goes to OUT_PATH as a JSON line: its kind (``read`` or ``write``), start
and end on ``time.monotonic()`` (one clock for every process on the machine; the end
where the body stops, as a loss cancels it there), its fencing token, and for writes
how long the acquire waited.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import redis.asyncio as redis

from asynclock import ReadWriteLock


async def work(url: str, name: str, seconds: float, role: str) -> list[dict[str, Any]]:
    """Play ``role`` for ``seconds``; return the sections."""
    client = redis.Redis.from_url(url)
    rw = ReadWriteLock(client, name, ttl=5, timeout=30)
    records: list[dict[str, Any]] = []
    stop = time.monotonic() + seconds

    async def section(kind: str, hold: float) -> None:
        side = rw.read() if kind == "read" else rw.write()
        asked = time.monotonic()
        async with side as lease:
            start = time.monotonic()
            try:
                await asyncio.sleep(hold)
            finally:
                end = time.monotonic()
        records.append(
            {"kind": kind, "start": start, "end": end, "fence": lease.fencing_token,
             "waited": start - asked}
        )  # fmt: skip

    async def mix() -> None:
        while time.monotonic() < stop:
            kind = "write" if random.random() < 0.2 else "read"
            await section(kind, random.uniform(0.001, 0.02))

    async def readers() -> None:
        while time.monotonic() < stop:
            await section("read", random.uniform(0.05, 0.1))

    async def writer() -> None:
        await asyncio.sleep(1)
        while time.monotonic() < stop:
            await section("write", 0.01)
            await asyncio.sleep(0.5)

    if role == "writer":
        await writer()
    else:
        loop = mix if role == "mix" else readers
        await asyncio.gather(*(loop() for _ in range(4)))
    await client.aclose()
    return records


if __name__ == "__main__":
    url, name, seconds, role, out = sys.argv[1:6]
    outcome = asyncio.run(work(url, name, float(seconds), role))
    with open(out, "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in outcome)
