"""A worker process for the single-flight tests.

Usage:
    python flight_worker.py URL ROUNDS CALLERS TOTAL OUT_PATH   # ask ROUNDS flights
    python flight_worker.py URL lead NAME TTL                   # lead, say so, hang

In the first form, each of CALLERS coroutines asks every flight ``flight:<round>`` once.
Before asking it counts itself in Redis (``asked:<round>``); the job waits until all
TOTAL callers of every process have counted themselves, and half a second more, so
that every caller asks while the flight is under way: exactly one job per round may
run. The job counts its runs (``runs:<round>``) and returns who ran it and a random
nonce. Each caller's value goes to OUT_PATH as a JSON line.

In the second form, the worker leads flight NAME with a job that prints ``running``
and hangs until the process is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from typing import Any

import redis.asyncio as redis

from asynclock import SingleFlight


async def ask(url: str, rounds: int, callers: int, total: int) -> list[dict[str, Any]]:
    """Ask every round's flight from ``callers`` coroutines; return what each got."""
    client = redis.Redis.from_url(url)
    records: list[dict[str, Any]] = []

    async def job(round_: int) -> dict[str, Any]:
        await client.incr(f"runs:{round_}")
        deadline = time.monotonic() + 20
        while int(await client.get(f"asked:{round_}") or 0) < total:
            assert time.monotonic() < deadline, "the callers never all asked"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        return {"by": os.getpid(), "nonce": secrets.token_hex(8)}

    async def caller(round_: int) -> None:
        await client.incr(f"asked:{round_}")
        flight = SingleFlight(client, f"flight:{round_}", ttl=5, timeout=30)
        value = await flight.run(job, round_)
        records.append({"round": round_, "value": value})

    for round_ in range(rounds):
        await asyncio.gather(*(caller(round_) for _ in range(callers)))
    await client.aclose()
    return records


async def lead(url: str, name: str, ttl: float) -> None:
    """Lead flight ``name`` until killed."""
    client = redis.Redis.from_url(url)

    async def job() -> str:
        print("running", flush=True)
        await asyncio.sleep(3600)
        return "never"

    await SingleFlight(client, name, ttl=ttl).run(job)


if __name__ == "__main__":
    url = sys.argv[1]
    if sys.argv[2] == "lead":
        asyncio.run(lead(url, sys.argv[3], float(sys.argv[4])))
    else:
        rounds, callers, total, out = sys.argv[2:6]
        outcome = asyncio.run(ask(url, int(rounds), int(callers), int(total)))
        with open(out, "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in outcome)
