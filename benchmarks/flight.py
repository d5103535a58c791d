"""How fast a single flight's outcome reaches its followers: ``python -m benchmarks.flight``.

64 callers ask one flight at once, spread over four clients (four processes, as far
as sharing goes: each client's callers share one wait, as a process's do). The job
takes 20 ms. Recorded, per flight: how many times the job ran (1 is the point), and
for every caller the time from the job's end, in the leader, to the caller having
the value: the landing's round trip, the notification, the follower's read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import redis.asyncio as redis

from asynclock import SingleFlight
from asynclock._server import RedisServer

#: Flights measured, callers per flight, clients they are spread over, the job's time.
FLIGHTS, CALLERS, CLIENTS, JOB_SECONDS = 50, 64, 4, 0.02


async def measure(url: str, flights: int = FLIGHTS) -> dict[str, float]:
    """Job runs per flight, and milliseconds from the job's end to each caller's value."""
    clients = [redis.Redis.from_url(url) for _ in range(CLIENTS)]
    runs = 0
    ended = 0.0
    took: list[float] = []

    async def job() -> int:
        nonlocal runs, ended
        runs += 1
        await asyncio.sleep(JOB_SECONDS)
        ended = time.perf_counter()
        return runs

    async def ask(client: redis.Redis, name: str) -> float:
        await SingleFlight(client, name, ttl=10, timeout=10).run(job)
        return time.perf_counter()

    try:
        for n in range(flights + 1):  # the first, with connections opening, not kept
            name = f"bench:flight:{n}"
            done = await asyncio.gather(*(ask(clients[k % CLIENTS], name) for k in range(CALLERS)))
            if n:
                took += [(at - ended) * 1000 for at in done]
    finally:
        for client in clients:
            await client.aclose()
    took.sort()
    return {
        "job runs per flight": runs / (flights + 1),
        "job's end to a caller's value, median ms": statistics.median(took),
        "job's end to a caller's value, p99 ms": took[int(len(took) * 0.99) - 1],
    }


def run(url: str | None = None, flights: int = FLIGHTS) -> dict[str, float]:
    """Measure on the server at ``url``, or on a private one."""
    if url is not None:
        return asyncio.run(measure(url, flights))
    with RedisServer() as server:
        return asyncio.run(measure(server.url, flights))


def table(figures: dict[str, float]) -> str:
    """The figures as a Markdown table."""
    lines = ["| what | value |", "|:---|---:|"]
    lines += [f"| {label} | {value:.2f} |" for label, value in figures.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flight", description=__doc__)
    parser.add_argument("--url", help="a running server (default: a private one)")
    parser.add_argument("--flights", type=int, default=FLIGHTS)
    args = parser.parse_args(argv)
    print(table(run(args.url, args.flights)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
