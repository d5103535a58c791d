"""Where the time of the hot path goes: the client's CPU, the server's, and in which calls.

Run with ``python -m benchmarks.profile``. Two workloads, on one client (hiredis
parser) and a private server started on 127.0.0.1 (unless ``--url`` is given):

- ``pair``: one task, an uncontended ``Mutex`` acquire+release (fencing and
  auto-extend on), beside redis-py's ``Lock`` on the same client, rounds interleaved;
- ``64x0``: 64 coroutines of one process on one name, each section yielding once
  and otherwise empty: every section is a hand-over inside the process;
- the floor: two script calls that do nothing (``return {1, 1}``), with the pair's
  keys and arguments, through asynclock's own way of sending a script. Whatever the
  lock does, its pair costs at least that; the pair's goal against redis-py's
  ``Lock`` (a plain ``SET`` and one script) can be no nearer than the floor's ratio.

For each it prints, per operation (a pair, or a section), the median over the rounds
of: wall time; the client's CPU time (``time.process_time``); the server's CPU time
(``INFO cpu``, networking included); the time the server spent in script calls
(``INFO commandstats``, reset at every round: give ``--url`` a server of your own
only if its statistics may be lost); and the server commands run, scripts' inner
ones included.
Then, unless ``--no-functions``, one more round of each asynclock workload under
``cProfile``: the functions that took the most time of their own. ``cProfile`` slows
the client about twofold and counts each resumption of a coroutine as a call, so its
figures say where the time goes, not how much there is.

On a machine whose client and server share two CPUs, the client's and the server's
CPU times add up to the wall time of one operation on one task: a millisecond saved
on either side is one saved on the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from asynclock import Mutex
from asynclock._server import RedisServer

from ._kinds import floor_pairs
from .uncontended import bounded_int

#: Upper bound of ``--operations`` and ``--rounds``, so that no typo runs for hours.
MAX_OPERATIONS = 1_000_000
MAX_ROUNDS = 101
#: Coroutines of the ``64x0`` workload.
WAITERS = 64


@dataclass(frozen=True, slots=True)
class Cost:
    """What one operation cost, in microseconds, and in server commands.

    :ivar wall_us: elapsed time
    :ivar client_us: the client process's CPU time
    :ivar server_us: the server's CPU time, networking included
    :ivar script_us: the server's time inside script calls
    :ivar commands: commands the server ran, scripts' inner commands included
    """

    wall_us: float
    client_us: float
    server_us: float
    script_us: float
    commands: float


async def _server_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _server_work(client: aioredis.Redis) -> tuple[float, int]:
    """Microseconds spent in scripts, and commands run, since the last reset."""
    stats = await client.info("commandstats")
    script_us = sum(
        float(stat["usec"]) for name, stat in stats.items() if name.startswith("cmdstat_eval")
    )
    commands = sum(
        int(stat["calls"])
        for name, stat in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    )
    return script_us, commands


async def measure(
    client: aioredis.Redis,
    run: Callable[[], Awaitable[int]],
    profile: cProfile.Profile | None = None,
) -> Cost:
    """Run ``run`` (which returns how many operations it made) once; return their cost."""
    await client.config_resetstat()
    server_before = await _server_cpu(client)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        operations = await run()
    finally:
        if profile is not None:
            profile.disable()
    wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
    server = await _server_cpu(client) - server_before
    script_us, commands = await _server_work(client)
    per = 1e6 / max(1, operations)
    return Cost(wall * per, cpu * per, server * per, script_us / max(1, operations),
                commands / max(1, operations))  # fmt: skip


def median_cost(costs: list[Cost]) -> Cost:
    """The median of each figure over rounds."""
    return Cost(*(statistics.median(getattr(cost, field) for cost in costs)
                  for field in Cost.__dataclass_fields__))  # fmt: skip


def pairs(lock: Mutex | aioredis.lock.Lock, count: int) -> Callable[[], Awaitable[int]]:
    """``count`` acquire+release pairs of ``lock``, one after another."""

    async def run() -> int:
        for _ in range(count):
            await lock.acquire()
            await lock.release()
        return count

    return run


def empty_pairs(client: aioredis.Redis, name: str, count: int) -> Callable[[], Awaitable[int]]:
    """``count`` pairs of empty script calls, with the keys and arguments of an
    acquire and a release of ``name``: the floor of an acquire+release pair."""
    floor = floor_pairs(client, name)

    async def run() -> int:
        await floor(count)
        return count

    return run


def hand_overs(client: aioredis.Redis, name: str, seconds: float) -> Callable[[], Awaitable[int]]:
    """64 coroutines on ``name`` for ``seconds``, sections yielding once; returns the
    sections run."""

    async def run() -> int:
        done = 0
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            lock = Mutex(client, name, ttl=30)
            while time.monotonic() < stop_at:
                async with lock:
                    await asyncio.sleep(0)
                done += 1

        await asyncio.gather(*(worker() for _ in range(WAITERS)))
        return done

    return run


def top_functions(profile: cProfile.Profile, operations: int, limit: int) -> str:
    """The ``limit`` functions with the most time of their own, per operation."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:limit]  # type: ignore[attr-defined]
    lines = [f"  {'own us/op':>9}  {'calls/op':>8}  function"]
    for (path, line, function), (_, calls, own, _cumulative, _) in rows:
        where = path.rsplit("/site-packages/", 1)[-1].rsplit("/lib/python", 1)[-1]
        own_us, per_op = own * 1e6 / operations, calls / operations
        lines.append(f"  {own_us:9.1f}  {per_op:8.2f}  {function} ({where}:{line})")
    return "\n".join(lines)


def row(label: str, cost: Cost) -> str:
    """One line of the table."""
    return (
        f"{label:<34} {cost.wall_us:7.0f} {cost.client_us:7.0f} {cost.server_us:7.0f}"
        f" {cost.script_us:7.1f} {cost.commands:6.1f}"
    )


HEADER = (
    f"{'us per operation (median round)':<34} {'wall':>7} {'client':>7} {'server':>7}"
    f" {'scripts':>7} {'cmds':>6}"
)


async def run(url: str, operations: int, rounds: int, seconds: float, functions: int) -> str:
    """Measure both workloads; return the report."""
    client = aioredis.Redis.from_url(url, max_connections=WAITERS + 10)
    try:
        mutex = Mutex(client, "asynclock-profile:pair", ttl=30)
        theirs = client.lock("asynclock-profile:redis-py", timeout=30)
        await pairs(mutex, 200)()  # connections made, scripts loaded
        await pairs(theirs, 200)()
        await empty_pairs(client, "asynclock-profile:floor", 200)()
        ours_costs, theirs_costs, floor_costs, section_costs = [], [], [], []
        for _ in range(rounds):
            ours_costs.append(await measure(client, pairs(mutex, operations)))
            theirs_costs.append(await measure(client, pairs(theirs, operations)))
            floor_costs.append(
                await measure(client, empty_pairs(client, "asynclock-profile:floor", operations))
            )
            section_costs.append(
                await measure(client, hand_overs(client, "asynclock-profile:64x0", seconds))
            )
        ours, redis_py = median_cost(ours_costs), median_cost(theirs_costs)
        floor = median_cost(floor_costs)
        lines = [
            HEADER,
            row("Mutex acquire+release", ours),
            row("redis-py Lock acquire+release", redis_py),
            row("two empty scripts (the floor)", floor),
            row("64 waiters, one section", median_cost(section_costs)),
            f"uncontended pairs/s against redis-py's: {redis_py.wall_us / ours.wall_us:.2f}x",
            f"the floor's pairs/s against redis-py's: {redis_py.wall_us / floor.wall_us:.2f}x",
        ]
        if functions:
            pair_profile = cProfile.Profile()
            await measure(client, pairs(mutex, operations), pair_profile)
            lines += ["", "Mutex acquire+release under cProfile:",
                      top_functions(pair_profile, operations, functions)]  # fmt: skip
            section_profile = cProfile.Profile()
            done = 0

            async def counted() -> int:
                nonlocal done
                done = await hand_overs(client, "asynclock-profile:64x0", seconds)()
                return done

            await measure(client, counted, section_profile)
            lines += ["", "64 waiters under cProfile, per section:",
                      top_functions(section_profile, max(1, done), functions)]  # fmt: skip
        return "\n".join(lines)
    finally:
        await client.aclose()


def main() -> int:
    """Parse the options, run, print."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument(
        "--url",
        help="a running server, whose statistics are reset (CONFIG RESETSTAT) at every"
        " round (default: start a private one)",
    )
    parser.add_argument(
        "--operations",
        type=bounded_int(1, MAX_OPERATIONS),
        default=3000,
        help="pairs per round (default 3000)",
    )
    parser.add_argument(
        "--rounds", type=bounded_int(1, MAX_ROUNDS), default=5, help="rounds (default 5)"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="of 64 waiters per round (default 2)"
    )
    parser.add_argument(
        "--functions",
        type=bounded_int(0, 200),
        default=25,
        help="functions listed per profile, 0 for none (default 25)",
    )
    args = parser.parse_args()
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be above 0 and at most 60")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(RedisServer()).url
        print(asyncio.run(run(url, args.operations, args.rounds, args.seconds, args.functions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
