"""Memory per idle lock object and per waiting coroutine, on a real server.

Run with ``python -m benchmarks.memory``. Python's own allocation tracing
(``tracemalloc``) counts what a step allocated and still holds, divided by how many
objects the step made:

- an idle ``Mutex``: made, never acquired; on its own name (its keys are worked out
  and kept), and on a name already known (the keys are shared);
- redis-py's ``Lock`` object, for scale;
- a coroutine waiting for a held ``Mutex``: its task, its acquisition, its place in
  the process's queue and what the lock object keeps, once every one of them waits
  (the lock's statistics say so).

Unless ``--url`` is given, the server is a private one started on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from asynclock import Mutex
from asynclock._server import RedisServer

from .uncontended import bounded_int

#: The most objects one measurement makes, so that no typo runs out of memory.
MAX_COUNT = 100_000
#: The longest the waiters may take to queue up, in seconds.
QUEUE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Figure:
    """One measurement: what was made, and the bytes each holds."""

    what: str
    bytes_each: float


def held_bytes(make: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``make``; return what it made and the bytes allocated meanwhile and still held."""
    gc.collect()
    before = tracemalloc.take_snapshot()
    made = make()
    gc.collect()
    after = tracemalloc.take_snapshot()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return made, held


async def waiting_bytes(client: aioredis.Redis, name: str, count: int) -> float:
    """Bytes per coroutine waiting for a held ``Mutex`` on ``name`` (one object each)."""
    holder = Mutex(client, name, ttl=60)
    if not await holder.acquire(blocking=False):
        raise RuntimeError(f"the lock {name!r} was not free")
    waiters: list[asyncio.Task[bool]] = []
    try:
        probe = Mutex(client, name, ttl=60)
        gc.collect()
        before = tracemalloc.take_snapshot()
        waiters.extend(
            asyncio.ensure_future(Mutex(client, name, ttl=60).acquire()) for _ in range(count)
        )
        deadline = time.monotonic() + QUEUE_TIMEOUT
        while probe.statistics().waiting < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {probe.statistics().waiting} of {count} waiters queued")
            await asyncio.sleep(0.05)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await holder.release()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / count


async def measure(url: str, count: int) -> list[Figure]:
    """Every figure, against the server at ``url``."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        Mutex(client, "memory:warm-up")  # imports and first-use caches out of the way
        tracemalloc.start()
        try:
            _, own = held_bytes(lambda: [Mutex(client, f"memory:idle:{n}") for n in range(count)])
            _, shared = held_bytes(
                lambda: [Mutex(client, f"memory:idle:{n}") for n in range(count)]
            )
            _, peer = held_bytes(
                lambda: [client.lock(f"memory:redis-py:{n}") for n in range(count)]
            )
            waiting = await waiting_bytes(client, "memory:waited", count)
        finally:
            tracemalloc.stop()
    finally:
        await client.aclose()
    return [
        Figure("idle Mutex, a name of its own", own / count),
        Figure("idle Mutex, a name already known", shared / count),
        Figure("idle redis-py Lock", peer / count),
        Figure("coroutine waiting for a held Mutex", waiting),
    ]


def format_text(figures: Sequence[Figure], count: int) -> str:
    """The figures as a small table."""
    lines = [f"memory held per object, {count} of each (tracemalloc)", ""]
    lines += [f"{figure.what:<40} {figure.bytes_each:>8,.0f} bytes" for figure in figures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--url", metavar="URL", help="a running server (default: a private one)")
    parser.add_argument(
        "--count",
        type=bounded_int(1, MAX_COUNT),
        default=1000,
        metavar="N",
        help="objects per measurement (default 1000)",
    )
    args = parser.parse_args(argv)
    if args.url:
        figures = asyncio.run(measure(args.url, args.count))
    else:
        with RedisServer() as server:
            figures = asyncio.run(measure(server.url, args.count))
    print(format_text(figures, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
