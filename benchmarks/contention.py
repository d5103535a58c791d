"""Contended hand-off: ``python -m benchmarks.contention`` (part of ``python -m benchmarks``).

Coroutines loop for ``--seconds``: pick a lock name, wait for the lock, hold it for
1 ms, release. The scenarios:

- 2, 16 and 64 coroutines in one process, on one name;
- 64 coroutines on one name with empty sections (no hold): the hand-over alone, whose
  limit is one script call, so the report sets it beside the client's own rate of
  sequential EVALSHA calls;
- 4 processes x 8 coroutines, on one name (the processes are started first and begin
  together; sections are compared on the system-wide monotonic clock);
- 200 coroutines in one process over 1,000 names, each section on a random name;
- on a Redis Cluster of three primaries, started beside the single server: 64
  coroutines on one name, 4 processes x 8 on one name, and 200 coroutines over 1,000
  names spread over the shards, with redis-py's Lock on ``RedisCluster`` beside
  asynclock (the other peers do not support Redis Cluster).

Per scenario and implementation the report gives sections per second, the wait of
each acquire (p50, p99, max), the share of sections that went to another holder than
the previous section of the same name (hand-offs; a polling lock mostly lets the
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
import contextlib
import itertools
import multiprocessing
import random
import secrets
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from asynclock import Mutex
from asynclock._server import LocalCluster, RedisServer

HOLD = 0.001  # seconds a section lasts
#: How long a scenario may run past its ``seconds`` before it counts as hung.
GRACE = 60.0
#: How long the processes of a multi-process scenario get to start and connect.
PROCESS_START = 5.0
#: How long the coroutines of one process get to warm up before the measured run.
WARM_UP = 1.0
#: Lock-and-release pairs per implementation when counting uncontended commands.
UNCONTENDED_PAIRS = 200


@dataclass(frozen=True, slots=True)
class Scenario:
    """Who contends for what: processes x coroutines, over some names."""

    key: str
    label: str
    processes: int
    coroutines: int  # per process
    names: int
    hold: float = HOLD  # seconds a section lasts
    cluster: bool = False  # on the Redis Cluster, not the single server

    @property
    def workers(self) -> int:
        """Coroutines in all."""
        return self.processes * self.coroutines


SCENARIOS: dict[str, Scenario] = {
    scenario.key: scenario
    for scenario in (
        Scenario("2", "2 coroutines, 1 name", 1, 2, 1),
        Scenario("16", "16 coroutines, 1 name", 1, 16, 1),
        Scenario("64", "64 coroutines, 1 name", 1, 64, 1),
        Scenario("64x0", "64 coroutines, 1 name, empty sections", 1, 64, 1, hold=0.0),
        Scenario("4x8", "4 processes x 8 coroutines, 1 name", 4, 8, 1),
        Scenario("1000names", "200 coroutines, 1000 names", 1, 200, 1000),
        Scenario("c64", "Cluster: 64 coroutines, 1 name", 1, 64, 1, cluster=True),
        Scenario("c4x8", "Cluster: 4 processes x 8 coroutines, 1 name", 4, 8, 1, cluster=True),
        Scenario("c1000names", "Cluster: 200 coroutines, 1000 names", 1, 200, 1000, cluster=True),
    )
}


@dataclass(frozen=True, slots=True)
class Section:
    """One critical section: who held which name, how long it waited, when it ran."""

    worker: str
    name: int
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


#: Releases a lock taken by an ``Acquire``.
Release = Callable[[], Awaitable[None]]
#: Takes the lock of a name, waiting as long as needed, and returns how to release it.
Acquire = Callable[[str], Awaitable[Release]]
#: Makes a worker's ``Acquire`` for a client and a worker number.
Maker = Callable[[aioredis.Redis, int], Acquire]


def asynclock_mutex(client: aioredis.Redis, worker: int) -> Acquire:
    """``Mutex(client, name)`` per section, as ``async with`` would; return the releaser."""

    async def acquire(name: str) -> Release:
        lock = Mutex(client, name, ttl=30)
        await lock.acquire()
        return lock.release

    return acquire


def redis_py_lock(sleep: float) -> Maker:
    """redis-py's asyncio Lock polling every ``sleep`` seconds."""

    def make(client: aioredis.Redis, worker: int) -> Acquire:
        async def acquire(name: str) -> Release:
            lock = client.lock(name, timeout=30, sleep=sleep, thread_local=False)
            await lock.acquire()
            return lock.release

        return acquire

    return make


def pottery_aioredlock(client: aioredis.Redis, worker: int) -> Acquire:
    """pottery's ``AIORedlock`` on one master, with its defaults."""
    from pottery import AIORedlock  # an optional peer: pip install '.[bench]'

    async def acquire(name: str) -> Release:
        lock = AIORedlock(key=name, masters={client}, auto_release_time=30)
        await lock.acquire()
        return lock.release

    return acquire


def python_redis_lock(client: aioredis.Redis, worker: int) -> Acquire:
    """python-redis-lock (synchronous, waking by BLPOP), in a thread per worker."""
    import redis as sync_redis
    import redis_lock  # type: ignore[import-untyped]  # optional: pip install '.[bench]'

    kwargs = client.connection_pool.connection_kwargs
    sync_client = sync_redis.Redis(host=kwargs["host"], port=kwargs["port"])
    thread = concurrent.futures.ThreadPoolExecutor(1)
    _threads.append(thread)

    async def acquire(name: str) -> Release:
        loop = asyncio.get_running_loop()
        lock = redis_lock.Lock(sync_client, name, expire=30)
        await loop.run_in_executor(thread, lock.acquire)

        async def release() -> None:
            await loop.run_in_executor(thread, lock.release)

        return release

    return acquire


# The threads of python-redis-lock workers, shut down after each scenario.
_threads: list[concurrent.futures.ThreadPoolExecutor] = []

IMPLEMENTATIONS: dict[str, Maker] = {
    "asynclock Mutex": asynclock_mutex,
    "redis-py Lock (sleep 0.1)": redis_py_lock(0.1),
    "redis-py Lock (sleep 0.005)": redis_py_lock(0.005),
    "pottery AIORedlock": pottery_aioredlock,
    "python-redis-lock (threads)": python_redis_lock,
}
OURS = "asynclock Mutex"
#: The implementations that run on Redis Cluster.
ON_CLUSTER = ("asynclock Mutex", "redis-py Lock (sleep 0.1)", "redis-py Lock (sleep 0.005)")


def connect(url: str, cluster: bool, max_connections: int | None = None) -> aioredis.Redis:
    """A client of the server at ``url``, or of the cluster whose node it is."""
    if cluster:
        # Typed as a Redis: the implementations call only what both clients have.
        return RedisCluster.from_url(url, max_connections=max_connections or 100)  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, max_connections=max_connections)


async def commands(client: aioredis.Redis) -> int:
    """Commands the server (every primary of a cluster) has run so far, INFO aside."""
    ignored = ("cmdstat_info", "cmdstat_client", "cmdstat_hello", "cmdstat_ping", "cmdstat_cluster")
    if isinstance(client, RedisCluster):
        replies = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        every = list(replies.values())
    else:
        every = [await client.info("commandstats")]
    return sum(
        int(value["calls"])
        for stats in every
        for key, value in stats.items()
        if not key.startswith(ignored)
    )


def overlaps(sections: Iterable[Section]) -> int:
    """Sections that started before the previous one of the same name ended."""
    count = 0
    for ordered in by_name(sections).values():
        count += sum(1 for a, b in itertools.pairwise(ordered) if b.start < a.end)
    return count


def by_name(sections: Iterable[Section]) -> dict[int, list[Section]]:
    """The sections of each name, in order of start."""
    names: dict[int, list[Section]] = defaultdict(list)
    for section in sections:
        names[section.name].append(section)
    for ordered in names.values():
        ordered.sort(key=lambda section: section.start)
    return names


def handoff_share(sections: Iterable[Section]) -> float:
    """The share of sections whose holder differs from the previous one of that name."""
    changes = successions = 0
    for ordered in by_name(sections).values():
        successions += len(ordered) - 1
        changes += sum(1 for a, b in itertools.pairwise(ordered) if a.worker != b.worker)
    return changes / max(1, successions)


async def work(
    url: str,
    label: str,
    scenario: Scenario,
    tag: str,
    process: int,
    start_at: float,
    seconds: float,
    sections_each: int | None = None,
) -> list[Section]:
    """Run one process's coroutines of ``scenario``; return their sections.

    Each coroutine starts sections until ``seconds`` after ``start_at``, or until it
    has run ``sections_each`` of them. Before ``start_at`` each runs one uncontended
    section on a name of its own: the connections a client opens on first need (one
    per coroutine, on each node of a cluster) and the scripts it loads are then in
    place, and the figures are those of a running service, not of its start.
    """
    make = IMPLEMENTATIONS[label]
    client = connect(url, scenario.cluster, max_connections=scenario.coroutines + 10)
    names = [f"{tag}:{number}" for number in range(scenario.names)]
    sections: list[Section] = []
    await client.ping()  # connected before the start

    acquirers = [make(client, number) for number in range(scenario.coroutines)]

    async def warm_up(number: int) -> None:
        release = await acquirers[number](f"{tag}:warm-up:{process}:{number}")
        await release()

    await asyncio.gather(*(warm_up(n) for n in range(scenario.coroutines)))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    stop_at = start_at + seconds

    async def worker(number: int) -> None:
        acquire = acquirers[number]
        chooser = random.Random(process * 100_000 + number)
        who = f"{process}:{number}"
        for _ in itertools.count() if sections_each is None else range(sections_each):
            if time.monotonic() >= stop_at:
                break
            name = chooser.randrange(len(names))
            asked = time.monotonic()
            release = await acquire(names[name])
            start = time.monotonic()
            if scenario.hold:
                await asyncio.sleep(scenario.hold)
            end = time.monotonic()
            await release()
            sections.append(Section(who, name, start - asked, start, end))

    try:
        await asyncio.gather(*(worker(n) for n in range(scenario.coroutines)))
    finally:
        await client.aclose()
        while _threads:
            _threads.pop().shutdown(wait=False)
    return sections


def work_in_process(
    url: str,
    label: str,
    scenario: Scenario,
    tag: str,
    process: int,
    start_at: float,
    seconds: float,
) -> list[Section]:
    """``work`` in a process of its own (the entry point of the started processes)."""
    return asyncio.run(work(url, label, scenario, tag, process, start_at, seconds))


async def measure(url: str, label: str, scenario: Scenario, seconds: float) -> Row:
    """Run ``scenario`` with one implementation for ``seconds``; return the figures."""
    admin = connect(url, scenario.cluster)
    tag = f"contention:{scenario.key}:{label}:{secrets.token_hex(3)}"
    try:
        before = await commands(admin)
        if scenario.processes == 1:
            started = time.monotonic() + WARM_UP
            sections = await work(url, label, scenario, tag, 0, started, seconds)
        else:
            loop = asyncio.get_running_loop()
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(scenario.processes, context) as pool:
                started = time.monotonic() + PROCESS_START
                parts = [
                    loop.run_in_executor(
                        pool, work_in_process, url, label, scenario, tag, p, started, seconds
                    )
                    for p in range(scenario.processes)
                ]
                sections = [section for part in await asyncio.gather(*parts) for section in part]
        elapsed = time.monotonic() - started
        used = await commands(admin) - before
    finally:
        await admin.aclose()
    waits = sorted(section.waited * 1000 for section in sections) or [float("nan")]
    return Row(
        scenario=scenario.label,
        implementation=label,
        sections_per_second=len(sections) / elapsed,
        wait_p50_ms=statistics.median(waits),
        wait_p99_ms=waits[min(len(waits) - 1, int(0.99 * len(waits)))],
        wait_max_ms=waits[-1],
        handoffs=handoff_share(sections),
        commands_per_section=used / max(1, len(sections)),
        overlaps=overlaps(sections),
    )


async def uncontended_commands(url: str, label: str, pairs: int = UNCONTENDED_PAIRS) -> float:
    """Commands the server runs per acquire+release of a free lock, as in the scenarios."""
    client = aioredis.Redis.from_url(url)
    acquire = IMPLEMENTATIONS[label](client, 0)
    name = f"uncontended:{label}:{secrets.token_hex(3)}"
    try:
        release = await acquire(name)  # connects, loads scripts: not counted
        await release()
        before = await commands(client)
        for _ in range(pairs):
            release = await acquire(name)
            await release()
        return (await commands(client) - before) / pairs
    finally:
        await client.aclose()
        while _threads:
            _threads.pop().shutdown(wait=False)


def failure(label: str, what: str, exc: BaseException) -> str:
    """How a peer that could not be measured is reported."""
    if isinstance(exc, ImportError):
        return f"{label}: not installed ({exc.name}); pip install '.[bench]'"
    if isinstance(exc, TimeoutError):
        return f"{label}, {what}: hung (no end within {GRACE:.0f} s of the scenario's end)"
    return f"{label}, {what}: failed: {exc!r}"


Progress = Callable[[str], None]


def to_stderr(line: str) -> None:
    """Print a progress line to stderr."""
    print(line, file=sys.stderr, flush=True)


async def run(
    url: str,
    scenarios: Sequence[Scenario],
    seconds: float,
    only: Sequence[str] | None = None,
    progress: Progress = to_stderr,
    cluster_url: str | None = None,
) -> tuple[list[Row], list[str]]:
    """Every scenario with every implementation; return the rows and what failed.

    A peer that is not installed, fails or hangs is reported, not silently dropped.
    Cluster scenarios run on ``cluster_url`` (a node of the cluster), with the
    implementations that support Redis Cluster; without it they are reported skipped.
    """
    labels = [label for label in IMPLEMENTATIONS if only is None or label in only]
    rows, problems = [], []
    if cluster_url is None and any(scenario.cluster for scenario in scenarios):
        problems.append("the Redis Cluster scenarios: skipped, no cluster to run them on")
        scenarios = [scenario for scenario in scenarios if not scenario.cluster]
    runs = [
        (scenario, label)
        for scenario in scenarios
        for label in labels
        if not scenario.cluster or label in ON_CLUSTER
    ]
    for done, (scenario, label) in enumerate(runs, 1):
        where = (cluster_url or url) if scenario.cluster else url
        progress(f"[{done}/{len(runs)}] {scenario.label} / {label} ...")
        limit = seconds + GRACE + (PROCESS_START if scenario.processes > 1 else 0)
        try:
            row = await asyncio.wait_for(measure(where, label, scenario, seconds), limit)
        except Exception as exc:
            problems.append(failure(label, scenario.label, exc))
            progress(f"    {problems[-1]}")
            continue
        progress(
            f"    {row.sections_per_second:.0f} sections/s, wait p99 {row.wait_p99_ms:.1f} ms,"
            f" max {row.wait_max_ms:.1f} ms, hand-offs {row.handoffs:.0%},"
            f" overlaps {row.overlaps}"
        )
        rows.append(row)
    return rows, problems


async def run_uncontended(
    url: str, only: Sequence[str] | None = None
) -> tuple[dict[str, float], list[str]]:
    """Commands per uncontended section of each implementation, and what failed."""
    figures, problems = {}, []
    for label in IMPLEMENTATIONS:
        if only is not None and label not in only:
            continue
        try:
            figures[label] = await asyncio.wait_for(uncontended_commands(url, label), GRACE)
        except Exception as exc:
            problems.append(failure(label, "uncontended", exc))
    return figures, problems


COLUMNS = (
    "scenario",
    "implementation",
    "sections/s",
    "wait p50 ms",
    "wait p99 ms",
    "wait max ms",
    "hand-offs",
    "server commands/section",
    "overlaps",
)


def cells(row: Row) -> tuple[str, ...]:
    """One row's cells, in the order of ``COLUMNS``."""
    return (
        row.scenario,
        row.implementation,
        f"{row.sections_per_second:.0f}",
        f"{row.wait_p50_ms:.1f}",
        f"{row.wait_p99_ms:.1f}",
        f"{row.wait_max_ms:.1f}",
        f"{row.handoffs:.0%}",
        f"{row.commands_per_section:.1f}",
        str(row.overlaps),
    )


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|:---|:---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def pick(keys: str) -> list[Scenario]:
    """The scenarios named in a comma-separated list of keys."""
    chosen = []
    for key in keys.split(","):
        if key not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {key!r}; known: {', '.join(SCENARIOS)}"
            )
        chosen.append(SCENARIOS[key])
    return chosen


def main() -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention")
    parser.add_argument("--url", help="a running server (default: start a private one)")
    parser.add_argument(
        "--cluster-url", help="a node of a running cluster (default: start a private one)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario (default 3)")
    parser.add_argument(
        "--scenarios", type=pick, default=list(SCENARIOS.values()), help=f"of {','.join(SCENARIOS)}"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(RedisServer()).url
        cluster_url = args.cluster_url
        if cluster_url is None and any(scenario.cluster for scenario in args.scenarios):
            cluster_url = stack.enter_context(LocalCluster()).url
        rows, problems = asyncio.run(
            run(url, args.scenarios, args.seconds, cluster_url=cluster_url)
        )
    print(table(rows))
    for problem in problems:
        print(f"\n- {problem}")
    return 1 if any(row.overlaps for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
