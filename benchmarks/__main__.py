"""The whole benchmark report in one run: ``python -m benchmarks``.

1. The floor (PING, an EVALSHA of ``return 1``) and the uncontended acquire+release
   of every primitive, beside redis-py's Lock (``benchmarks.uncontended``).
2. Contended hand-off in every scenario, asynclock beside the peers, and the server
   commands of one uncontended section of each (``benchmarks.contention``).
3. The cost of replica acknowledgement (``replicas=1``) on the uncontended pair, on a
   primary and a replica of our own (``benchmarks.replicas``; not with ``--url``).
4. How fast an ``Election``'s leadership changes hands after ``resign()``
   (``benchmarks.election``).
5. A ``SingleFlight`` asked by 64 callers at once: job runs per flight, and how soon
   the callers have the value after the job's end (``benchmarks.flight``).
6. A ``ReadWriteLock`` against a ``Mutex`` doing the same work, read-heavy and
   write-heavy (``benchmarks.rwlock``).
7. A ``Mutex`` on every store: Redis, PostgreSQL (a private server) and memory,
   uncontended and with 64 waiters (``benchmarks.stores``).
8. The targets, checked against this run's figures.

Progress goes to stderr while it runs. The report is printed, and written as
``<date>-report.md`` with a plot, ``<date>-report.png``, into ``--out`` (default
``benchmarks/results``). Unless ``--url`` is given, the server is a private one on
127.0.0.1, started for the run, and so is the Redis Cluster of the cluster scenarios
(three primaries) unless ``--cluster-url`` names a node of one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import RedisError

from asynclock._server import LocalCluster, RedisServer

from . import contention, election, flight, replicas, rwlock, stores, uncontended
from ._kinds import BenchmarkError
from .report import Results, draw, markdown


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asynclock against raw round trips and the other Python lock libraries.",
    )
    parser.add_argument("--url", metavar="URL", help="a running server (default: a private one)")
    parser.add_argument(
        "--cluster-url",
        metavar="URL",
        help="a node of a running Redis Cluster (default: a private one of 3 primaries)",
    )
    parser.add_argument(
        "--iterations",
        type=uncontended.bounded_int(1, uncontended.MAX_ITERATIONS),
        default=1000,
        metavar="N",
        help="uncontended operations per measurement (default 1000)",
    )
    parser.add_argument(
        "--rounds",
        type=uncontended.bounded_int(1, uncontended.MAX_ROUNDS),
        default=11,
        metavar="R",
        help="uncontended rounds; the median round is reported (default 11)",
    )
    parser.add_argument(
        "--seconds",
        type=uncontended.positive_seconds,
        default=3.0,
        help="how long each contended scenario runs per implementation (default 3)",
    )
    parser.add_argument(
        "--scenarios",
        type=contention.pick,
        default=list(contention.SCENARIOS.values()),
        metavar="KEYS",
        help=f"contended scenarios, of {','.join(contention.SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        metavar="DIR",
        help="where the Markdown report and the PNG plot go (default benchmarks/results)",
    )
    parser.add_argument(
        "--time-limit",
        type=uncontended.positive_seconds,
        default=1800.0,
        metavar="SECONDS",
        help="give up on the uncontended part after this long (default 1800)",
    )
    return parser.parse_args(argv)


async def measure(
    url: str, where: str, args: argparse.Namespace, cluster_url: str | None
) -> Results:
    """Run every part against the server at ``url`` (and the cluster at ``cluster_url``)."""
    report = await uncontended.run(url, where, args.iterations, args.rounds, args.time_limit)
    print(uncontended.format_text(report), file=sys.stderr)
    rows, problems = await contention.run(
        url, args.scenarios, args.seconds, cluster_url=cluster_url
    )
    commands, more = await contention.run_uncontended(url)
    return Results(report, tuple(rows), commands, (*problems, *more))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the report, and write it with its plot."""
    args = parse_args(argv)
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        with contextlib.ExitStack() as stack:
            url, where = args.url, "at the given --url"
            if url is None:
                server = stack.enter_context(RedisServer())
                print(f"started {server.binary} on {server.url}", file=sys.stderr)
                url, where = server.url, "started privately on 127.0.0.1"
            cluster_url = args.cluster_url
            if cluster_url is None and any(scenario.cluster for scenario in args.scenarios):
                cluster = stack.enter_context(LocalCluster())
                print(f"started a cluster of 3 primaries at {cluster.url}", file=sys.stderr)
                cluster_url = cluster.url
            results = asyncio.run(measure(url, where, args, cluster_url))
            if args.url is None:  # a replica of our own, beside our own server
                figures = replicas.run(rounds=min(args.rounds, replicas.ROUNDS))
                results = dataclasses.replace(results, replicas=figures)
            results = dataclasses.replace(results, election=election.run(url))
            results = dataclasses.replace(results, flight=flight.run(url))
            results = dataclasses.replace(results, rwlock=rwlock.run(url))
            results = dataclasses.replace(results, stores=stores.run(url))
    except (BenchmarkError, TimeoutError, RedisError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    stem = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}-report"
    args.out.mkdir(parents=True, exist_ok=True)
    plot: str | None = f"{stem}.png"
    try:
        draw(results.rows, args.out / f"{stem}.png")
    except ImportError:
        plot = None
        results = Results(
            results.uncontended,
            results.rows,
            results.commands,
            (*results.problems, "the plot: matplotlib is not installed; pip install '.[bench]'"),
        )
    text = markdown(results, command.strip(), plot)
    print(text)
    (args.out / f"{stem}.md").write_text(text)
    print(f"wrote {args.out / f'{stem}.md'}" + (f" and {plot}" if plot else ""), file=sys.stderr)
    return 1 if any(row.overlaps for row in results.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
