"""A worker process for the election tests.

Usage:
    python election_worker.py URL NAME TERMS OUT_PATH   # lead TERMS short terms, record them
    python election_worker.py URL NAME hold TTL         # lead, say so, and hang until killed

Each term runs ``Election.run`` with a body that records its start and end on
``time.monotonic()`` (one clock for every process on the machine), its term number
and who led, leads 5 to 30 ms and returns; the records go to OUT_PATH as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import redis.asyncio as redis

from asynclock import Election


async def lead_terms(url: str, name: str, terms: int) -> list[dict[str, Any]]:
    """Lead ``terms`` times, one short term each; return the records."""
    client = redis.Redis.from_url(url)
    election = Election(client, name, identity=f"worker:{os.getpid()}", ttl=5)
    records: list[dict[str, Any]] = []

    async def lead() -> None:
        start = time.monotonic()
        lease = election._term
        assert lease is not None
        await asyncio.sleep(random.uniform(0.005, 0.03))
        records.append(
            {"start": start, "end": time.monotonic(), "term": lease.fencing_token,
             "identity": election.identity}
        )  # fmt: skip

    for _ in range(terms):
        await election.run(lead)
    await client.aclose()
    return records


async def hold(url: str, name: str, ttl: float) -> None:
    """Lead until killed."""
    client = redis.Redis.from_url(url)
    election = Election(client, name, identity=f"holder:{os.getpid()}", ttl=ttl)

    async def lead() -> None:
        print("leading", flush=True)
        await asyncio.sleep(3600)

    await election.run(lead)


if __name__ == "__main__":
    url, name = sys.argv[1:3]
    if sys.argv[3] == "hold":
        asyncio.run(hold(url, name, float(sys.argv[4])))
    else:
        records = asyncio.run(lead_terms(url, name, int(sys.argv[3])))
        with open(sys.argv[4], "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
