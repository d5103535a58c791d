"""Contended hand-off in one process: ``python -m benchmarks.contention``.

N coroutines loop on one lock name for ``--seconds`` each: wait for the lock, hold it
for 1 ms, release. Per scenario and implementation the report gives sections per
second, the wait of each acquire (p50, p99, max), the share of sections that went to
another coroutine than the previous one (hand-offs; a polling lock mostly lets the
releasing coroutine take it straight back), commands the server ran per section
(from ``INFO commandstats``: this counts the commands inside Lua scripts too, so a
script-based lock shows more than its round trips), and overlaps, which must be 0.

Implementations: asynclock's ``Mutex`` (notification wake-up); redis-py's
``redis.asyncio.lock.Lock`` with its default 0.1 s poll and with a tuned 5 ms poll;
pottery's ``AIORedlock`` with its defaults; python-redis-lock, which is synchronous,
run in one thread per worker (it wakes waiters with BLPOP). The last two are optional
(``pip install '.[bench]'``); one that is missing, fails or hangs is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from asynclock import Mutex
from asynclock._server import RedisServer

HOLD = 0.001  # seconds a section lasts


@dataclass(frozen=True, slots=True)
class Section:
    """One critical section: who held it, how long it waited, when it ran."""

    worker: int
    waited: float
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Row:
    """The figures of one implementation in one scenario."""

    scenario: str
    implementation: str
    sections_per_second: float
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    handoffs: float
    commands_per_section: float
    overlaps: int


#: Takes the lock, waiting as long as needed, and returns how to release it.
Acquire = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]
#: Makes a worker's ``Acquire`` for a client, a lock name and a worker number.
Maker = Callable[[aioredis.Redis, str, int], Acquire]


def asynclock_mutex(client: aioredis.Redis, name: str, worker: int) -> Acquire:
    """Acquire with ``async with Mutex(...)`` semantics; return the releaser."""

    async def acquire() -> Callable[[], Awaitable[None]]:
        lock = Mutex(client, name, ttl=30)
        await lock.acquire()
        return lock.release

    return acquire


def redis_py_lock(sleep: float) -> Maker:
    """redis-py's asyncio Lock polling every ``sleep`` seconds."""

    def make(client: aioredis.Redis, name: str, worker: int) -> Acquire:
        lock = client.lock(name, timeout=30, sleep=sleep, thread_local=False)

        async def acquire() -> Callable[[], Awaitable[None]]:
            await lock.acquire()
            return lock.release

        return acquire

    return make


def pottery_aioredlock(client: aioredis.Redis, name: str, worker: int) -> Acquire:
    """pottery's ``AIORedlock`` on one master, with its defaults."""
    from pottery import AIORedlock  # an optional peer: pip install '.[bench]'

    lock = AIORedlock(key=name, masters={client}, auto_release_time=30)

    async def acquire() -> Callable[[], Awaitable[None]]:
        await lock.acquire()
        return lock.release

    return acquire


_threads: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def python_redis_lock(client: aioredis.Redis, name: str, worker: int) -> Acquire:
    """python-redis-lock (synchronous, waking by BLPOP), in a thread per worker."""
    import redis as sync_redis
    import redis_lock  # type: ignore[import-untyped]  # optional: pip install '.[bench]'

    kwargs = client.connection_pool.connection_kwargs
    sync_client = sync_redis.Redis(host=kwargs["host"], port=kwargs["port"])
    lock = redis_lock.Lock(sync_client, name, expire=30)
    thread = _threads.setdefault(worker, concurrent.futures.ThreadPoolExecutor(1))

    async def acquire() -> Callable[[], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(thread, lock.acquire)

        async def release() -> None:
            await loop.run_in_executor(thread, lock.release)

        return release

    return acquire


IMPLEMENTATIONS: dict[str, Maker] = {
    "asynclock Mutex": asynclock_mutex,
    "redis-py Lock (sleep 0.1)": redis_py_lock(0.1),
    "redis-py Lock (sleep 0.005)": redis_py_lock(0.005),
    "pottery AIORedlock": pottery_aioredlock,
    "python-redis-lock (threads)": python_redis_lock,
}


async def commands(client: aioredis.Redis) -> int:
    """Commands the server has run so far, the INFO calls aside."""
    stats = await client.info("commandstats")
    return sum(int(value["calls"]) for key, value in stats.items() if key != "cmdstat_info")


def overlaps(sections: list[Section]) -> int:
    """Sections that started before the previous one (by start) ended."""
    ordered = sorted(sections, key=lambda section: section.start)
    return sum(1 for a, b in itertools.pairwise(ordered) if b.start < a.end)


async def scenario(url: str, label: str, make: Maker, workers: int, seconds: float) -> Row:
    """Run ``workers`` coroutines on one name for ``seconds``; return the figures."""
    client = aioredis.Redis.from_url(url, max_connections=workers + 10)
    admin = aioredis.Redis.from_url(url)
    name = f"contention:{workers}:{label}"
    sections: list[Section] = []
    stop_at = time.monotonic() + seconds

    async def worker(number: int) -> None:
        acquire = make(client, name, number)
        while time.monotonic() < stop_at:
            asked = time.monotonic()
            release = await acquire()
            start = time.monotonic()
            await asyncio.sleep(HOLD)
            end = time.monotonic()
            await release()
            sections.append(Section(number, start - asked, start, end))

    before = await commands(admin)
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(workers))), seconds + 60)
    elapsed = time.monotonic() - started
    count = max(1, len(sections))
    used = await commands(admin) - before
    ordered = sorted(sections, key=lambda section: section.start)
    handoffs = sum(1 for a, b in itertools.pairwise(ordered) if a.worker != b.worker)
    waits = sorted(section.waited * 1000 for section in sections)
    await client.aclose()
    await admin.aclose()
    return Row(
        scenario=f"{workers} coroutines, 1 name",
        implementation=label,
        sections_per_second=len(sections) / elapsed,
        wait_p50_ms=statistics.median(waits),
        wait_p99_ms=waits[min(len(waits) - 1, int(0.99 * len(waits)))],
        wait_max_ms=waits[-1],
        handoffs=handoffs / max(1, len(sections) - 1),
        commands_per_section=used / count,
        overlaps=overlaps(sections),
    )


async def run(
    url: str, sizes: list[int], seconds: float, only: list[str] | None = None
) -> tuple[list[Row], list[str]]:
    """Every scenario with every implementation; return the rows and what failed.

    A peer that is not installed, fails or hangs is reported, not silently dropped.
    """
    rows, problems = [], []
    for workers in sizes:
        for label, make in IMPLEMENTATIONS.items():
            if only is not None and label not in only:
                continue
            try:
                row = await asyncio.wait_for(
                    scenario(url, label, make, workers, seconds), seconds + 60
                )
            except ImportError as exc:
                problems.append(f"{label}: not installed ({exc.name}); pip install '.[bench]'")
                continue
            except TimeoutError:
                problems.append(f"{label}, {workers} coroutines: hung (no end within 60 s)")
                continue
            except Exception as exc:
                problems.append(f"{label}, {workers} coroutines: failed: {exc!r}")
                continue
            print(f"{row.scenario} / {label}: {row.sections_per_second:.0f}/s", file=sys.stderr)
            rows.append(row)
    return rows, problems


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| scenario | implementation | sections/s | wait p50 ms | wait p99 ms | wait max ms "
        "| hand-offs | server commands/section | overlaps |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.scenario} | {row.implementation} | {row.sections_per_second:.0f} "
            f"| {row.wait_p50_ms:.1f} | {row.wait_p99_ms:.1f} | {row.wait_max_ms:.1f} "
            f"| {row.handoffs:.0%} | {row.commands_per_section:.1f} | {row.overlaps} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention")
    parser.add_argument("--url", help="a running server (default: start a private one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario (default 3)")
    parser.add_argument("--sizes", default="2,16,64", help="coroutines per scenario")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.url:
        rows, problems = asyncio.run(run(args.url, sizes, args.seconds))
    else:
        with RedisServer() as server:
            rows, problems = asyncio.run(run(server.url, sizes, args.seconds))
    print(table(rows))
    for problem in problems:
        print(f"\n- {problem}")
    return 1 if any(row.overlaps for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
