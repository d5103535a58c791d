"""The cost of replica acknowledgement: ``python -m benchmarks.replicas``.

A primary and one replica on 127.0.0.1. The uncontended ``Mutex`` acquire+release
pair with ``replicas=0`` and with ``replicas=1`` (the acquire then waits, with
``WAIT`` on the same connection, until the replica has it), in interleaved rounds
so that both see the same machine; the median round of each is printed, with
redis-py's ``Lock`` and a lone ``WAIT`` beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from asynclock import Mutex
from asynclock._server import RedisServer

from .report import replicas_table

#: Pairs per round.
PAIRS = 300
#: Rounds per kind, interleaved.
ROUNDS = 7


async def wait_for_replica(client: redis.Redis) -> None:
    """Wait until the primary's replica acknowledges writes."""
    deadline = time.monotonic() + 20
    while await client.wait(1, 100) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not come online")


async def measure(url: str, pairs: int, rounds: int) -> dict[str, float]:
    """Median microseconds per pair (or per command) of each kind."""
    client = redis.Redis.from_url(url)
    await wait_for_replica(client)

    def pair(**options: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            lock = Mutex(client, "bench:replicas", **options)  # type: ignore[arg-type]
            await lock.acquire()
            await lock.release()

        return run

    async def redis_py() -> None:
        lock = client.lock("bench:replicas:redis-py", timeout=30, thread_local=False)
        await lock.acquire()
        await lock.release()

    async def lone_wait() -> None:
        await client.set("bench:replicas:key", "1")
        await client.wait(1, 1000)

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "Mutex acquire+release, replicas=0": pair(),
        "Mutex acquire+release, replicas=1": pair(replicas=1),
        "redis-py Lock acquire+release": redis_py,
        "SET then WAIT 1 (two round trips)": lone_wait,
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for kind in kinds.values():  # connections and scripts in place first
            await kind()
        for _ in range(rounds):
            for label, kind in kinds.items():
                began = time.perf_counter()
                for _ in range(pairs):
                    await kind()
                times[label].append((time.perf_counter() - began) / pairs * 1e6)
    finally:
        await client.aclose()
    return {label: statistics.median(values) for label, values in times.items()}


def run(pairs: int = PAIRS, rounds: int = ROUNDS) -> dict[str, float]:
    """Start a primary and a replica of our own, measure, stop them."""
    primary = RedisServer()
    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(primary.port)))
    with primary, replica:
        return asyncio.run(measure(primary.url, pairs, rounds))


def main(argv: list[str] | None = None) -> int:
    """Start a primary and a replica, measure, print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"per round (default {PAIRS})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"(default {ROUNDS})")
    args = parser.parse_args(argv)
    print(replicas_table(run(args.pairs, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
