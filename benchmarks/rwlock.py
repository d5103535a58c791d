"""A read-write lock against a mutex doing the same work: ``python -m benchmarks.rwlock``.

Two clients (two processes, as far as the lock can tell) run 8 coroutines each for a
few seconds. Each section reads (a share of them, by mix) or writes, and holds the
lock 2 ms: the work. With ``ReadWriteLock`` reads share the lock; with ``Mutex`` every
section is alone. Sections per second, by mix, for both.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import redis.asyncio as redis

from asynclock import Mutex, ReadWriteLock
from asynclock._lock import LeaseLock
from asynclock._server import RedisServer

#: The mixes, by share of reads; seconds per mix and lock; coroutines per client.
MIXES = {"read-heavy (95% reads)": 0.95, "write-heavy (50% reads)": 0.5}
SECONDS, COROUTINES, HOLD = 2.0, 8, 0.002


async def sections_per_second(url: str, reads: float, kind: str, seconds: float) -> float:
    """Sections per second of ``kind`` (``"rwlock"`` or ``"mutex"``) at this mix."""
    clients = [redis.Redis.from_url(url) for _ in range(2)]
    name = f"bench:rw:{kind}:{reads}"
    done = 0
    rng = random.Random(7)

    async def loop(client: redis.Redis, stop: float) -> None:
        nonlocal done
        rw = ReadWriteLock(client, name, ttl=10)
        while time.monotonic() < stop:
            side: LeaseLock
            if kind == "mutex":
                side = Mutex(client, name, ttl=10)
            else:
                side = rw.read() if rng.random() < reads else rw.write()
            async with side:
                await asyncio.sleep(HOLD)
            done += 1

    try:
        # A warm-up: connections open, scripts load.
        await asyncio.gather(*(loop(c, time.monotonic() + 0.2) for c in clients))
        done = 0
        start = time.monotonic()
        stop = start + seconds
        await asyncio.gather(*(loop(c, stop) for c in clients for _ in range(COROUTINES)))
        return done / (time.monotonic() - start)
    finally:
        for client in clients:
            await client.aclose()


async def measure(url: str, seconds: float = SECONDS) -> dict[str, float]:
    """Sections per second, by mix, for the read-write lock and for the mutex."""
    figures: dict[str, float] = {}
    for label, reads in MIXES.items():
        for kind in ("rwlock", "mutex"):
            rate = await sections_per_second(url, reads, kind, seconds)
            figures[f"{label}, {'ReadWriteLock' if kind == 'rwlock' else 'Mutex'}"] = rate
    return figures


def run(url: str | None = None, seconds: float = SECONDS) -> dict[str, float]:
    """Measure on the server at ``url``, or on a private one."""
    if url is not None:
        return asyncio.run(measure(url, seconds))
    with RedisServer() as server:
        return asyncio.run(measure(server.url, seconds))


def table(figures: dict[str, float]) -> str:
    """The figures as a Markdown table."""
    lines = ["| mix, lock | sections/s |", "|:---|---:|"]
    lines += [f"| {label} | {value:.0f} |" for label, value in figures.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rwlock", description=__doc__)
    parser.add_argument("--url", help="a running server (default: a private one)")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args(argv)
    print(table(run(args.url, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
