"""How fast leadership changes hands: ``python -m benchmarks.election``.

Two replicas (two clients of one server) take turns: one leads, the other campaigns,
the leader calls ``resign()``, and the time until the other's term begins is
recorded. The campaigner is woken by the step-down's notification, so this is about
one round trip for the release and one for the new term, not the TTL.

Then a leader that crashes: its term taken with a 300 ms lease that nobody extends
(a process gone), a campaigner waiting. Recorded: the time from the lease's expiry,
on the client's clock, to the campaigner's term; the campaigner tries again when the
lease it was refused by runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import redis.asyncio as redis

from asynclock import Election, _scripts
from asynclock._names import NamedLocks
from asynclock._server import RedisServer

#: Hand-overs measured; crashes measured, and the crashed leader's lease (ms).
HAND_OVERS = 200
CRASHES, CRASHED_TTL_MS = 10, 300


async def measure(url: str, hand_overs: int = HAND_OVERS) -> dict[str, float]:
    """Milliseconds from ``resign()`` to the next leader's term: median and p99."""
    clients = [redis.Redis.from_url(url) for _ in range(2)]
    replicas = [
        Election(client, "bench:election", identity=f"replica-{n}", ttl=10)
        for n, client in enumerate(clients)
    ]
    took: list[float] = []
    try:
        # Each term begins in a task of its own (one task campaigns per Election object
        # at a time), and ends by resign() from here.
        await asyncio.create_task(replicas[0].__aenter__())
        for n in range(hand_overs + 1):  # the first, with connections opening, not kept
            leader, campaigner = replicas[n % 2], replicas[1 - n % 2]
            campaign = asyncio.create_task(campaigner.__aenter__())
            await asyncio.sleep(0.002)  # refused, waiting for a release
            began = time.perf_counter()
            await leader.resign()
            await campaign
            if n:
                took.append((time.perf_counter() - began) * 1000)
        await replicas[1 - hand_overs % 2].resign()  # the last term's leader
    finally:
        for client in clients:
            await client.aclose()
    took.sort()
    after_crash = await crashes(url, max(1, min(CRASHES, hand_overs)))
    return {
        "resign() to the next leader, median ms": statistics.median(took),
        "resign() to the next leader, p99 ms": took[int(len(took) * 0.99) - 1],
        "a crashed leader's lease expiry to the next leader, median ms": after_crash,
    }


async def crashes(url: str, count: int) -> float:
    """Milliseconds from a crashed leader's lease expiry to the next term: median."""
    client = redis.Redis.from_url(url)
    campaigner = Election(client, "bench:crash", identity="survivor", ttl=10)
    keys = NamedLocks("asynclock:", ("bench:crash",)).keys
    took: list[float] = []
    try:
        for n in range(count):
            # The crashed leader: a term nobody extends.
            taken = time.perf_counter()
            reply = await _scripts.ACQUIRE(client, keys, (f"crashed-{n}", CRASHED_TTL_MS))
            assert int(reply[0]) == 1
            term = asyncio.create_task(campaigner.__aenter__())
            await term
            took.append((time.perf_counter() - taken) * 1000 - CRASHED_TTL_MS)
            await campaigner.resign()
    finally:
        await client.aclose()
    return statistics.median(took)


def run(url: str | None = None, hand_overs: int = HAND_OVERS) -> dict[str, float]:
    """Measure on the server at ``url``, or on a private one."""
    if url is not None:
        return asyncio.run(measure(url, hand_overs))
    with RedisServer() as server:
        return asyncio.run(measure(server.url, hand_overs))


def table(figures: dict[str, float]) -> str:
    """The figures as a Markdown table."""
    lines = ["| what | ms |", "|:---|---:|"]
    lines += [f"| {label} | {value:.2f} |" for label, value in figures.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.election", description=__doc__)
    parser.add_argument("--url", help="a running server (default: a private one)")
    parser.add_argument("--hand-overs", type=int, default=HAND_OVERS)
    args = parser.parse_args(argv)
    print(table(run(args.url, args.hand_overs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
