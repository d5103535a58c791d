"""This tree's asynclock against another checkout of it, in one process, one run.

``python -m benchmarks.compare --against DIR`` imports the package of ``DIR`` (a
checkout of another commit, such as ``git worktree add /tmp/base HEAD~1``) beside this
one, under another name, and times both on one private server, rounds interleaved,
so that machine noise hits both alike:

- the uncontended ``acquire()`` + ``release()`` pair and an ``async with`` section,
  beside redis-py's ``Lock`` (pairs/s as a ratio to it);
- ``--waiters`` coroutines of one process contending for one name, 1 ms sections,
  ``--seconds`` per run, the two trees alternating.

Medians over ``--rounds``; every round is shown by its range. Nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType

import redis.asyncio as aioredis

import asynclock
from asynclock._server import RedisServer

#: The name the other tree's package is imported under.
BASE = "asynclock_base"


def load_base(checkout: Path, into: Path) -> ModuleType:
    """Import ``checkout``'s package as :data:`BASE` (its imports are relative)."""
    source = checkout / "asynclock"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"no asynclock package in {checkout}")
    shutil.copytree(source, into / BASE)
    sys.path.insert(0, str(into))
    return importlib.import_module(BASE)


async def timed(operation: Callable[[], Awaitable[None]], iterations: int) -> float:
    """Microseconds per operation, over ``iterations`` sequential ones."""
    started = time.perf_counter()
    for _ in range(iterations):
        await operation()
    return (time.perf_counter() - started) / iterations * 1e6


async def uncontended(
    client: aioredis.Redis, base: ModuleType, iterations: int, rounds: int
) -> dict[str, list[float]]:
    """Each kind's microseconds per operation, one figure per round."""
    this_lock = asynclock.Mutex(client, "compare:this", ttl=30)
    base_lock = base.Mutex(client, "compare:base", ttl=30)

    async def pair(lock: asynclock.Mutex) -> None:
        await lock.acquire()
        await lock.release()

    async def this_with() -> None:
        async with asynclock.Mutex(client, "compare:this-with", ttl=30):
            pass

    async def base_with() -> None:
        async with base.Mutex(client, "compare:base-with", ttl=30):
            pass

    async def redis_py() -> None:
        lock = client.lock("compare:redis-py", timeout=30)
        await lock.acquire()
        await lock.release()

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "this: acquire+release": lambda: pair(this_lock),
        "base: acquire+release": lambda: pair(base_lock),
        "this: async with": this_with,
        "base: async with": base_with,
        "redis-py Lock: acquire+release": redis_py,
    }
    for operation in kinds.values():  # warm up: connections, scripts, subscriber
        await timed(operation, 100)
    figures: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, operation in kinds.items():
            figures[name].append(await timed(operation, iterations))
    return figures


async def contended(
    client: aioredis.Redis, module: ModuleType, name: str, waiters: int, seconds: float
) -> tuple[float, float]:
    """Sections per second and p99 wait (ms) of ``waiters`` coroutines on one name."""
    waits: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            asked = time.monotonic()
            async with module.Mutex(client, name, ttl=30):
                waits.append(time.monotonic() - asked)
                await asyncio.sleep(0.001)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(waiters))), seconds + 60)
    elapsed = time.monotonic() - started
    waits.sort()
    return len(waits) / elapsed, waits[int(len(waits) * 0.99)] * 1000


def summary(figures: Sequence[float]) -> str:
    """The median of ``figures`` and their range."""
    return f"{statistics.median(figures):8.1f} ({min(figures):.0f}-{max(figures):.0f})"


async def main(options: argparse.Namespace, base: ModuleType) -> None:
    """Run both parts and print them."""
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url, max_connections=4 * options.waiters)
        try:
            figures = await uncontended(client, base, options.iterations, options.rounds)
            reference = statistics.median(figures["redis-py Lock: acquire+release"])
            print(f"uncontended, us/op: median (range) over {options.rounds} rounds")
            for name, values in figures.items():
                ratio = reference / statistics.median(values)
                print(f"  {name:32s} {summary(values)}   pairs/s {ratio:.2f}x redis-py's")
            print(f"{options.waiters} coroutines on one name, 1 ms sections")
            for run in range(options.runs):
                for label, module in (("this", asynclock), ("base", base)):
                    rate, p99 = await contended(
                        client, module, f"compare:{label}:{run}", options.waiters, options.seconds
                    )
                    print(f"  run {run + 1} {label}: {rate:6.0f} sections/s, wait p99 {p99:.1f} ms")
        finally:
            await client.aclose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--against", type=Path, required=True, help="another checkout")
    parser.add_argument("--iterations", type=int, default=500, help="operations per round")
    parser.add_argument("--rounds", type=int, default=11, help="uncontended rounds")
    parser.add_argument("--waiters", type=int, default=64, help="contending coroutines")
    parser.add_argument("--seconds", type=float, default=3.0, help="each contended run")
    parser.add_argument("--runs", type=int, default=3, help="contended runs of each tree")
    options = parser.parse_args(argv)
    bounds = {"iterations": 100_000, "rounds": 101, "waiters": 1_000, "runs": 20}
    for name, most in bounds.items():
        if not 1 <= getattr(options, name) <= most:
            parser.error(f"--{name} must be from 1 to {most}")
    if not 0 < options.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    return options


if __name__ == "__main__":
    arguments = parse_args(None)
    with tempfile.TemporaryDirectory(prefix="asynclock-compare-") as folder:
        asyncio.run(main(arguments, load_base(arguments.against, Path(folder))))
