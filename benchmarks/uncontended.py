"""Uncontended lock cost against raw Redis round trips.

Run alone with ``python -m benchmarks.uncontended``; ``python -m benchmarks`` runs it
as the first part of the whole report.

One ``redis.asyncio.Redis`` client (hiredis parser), one task, sequential awaits:
each round runs ``--iterations`` operations of every kind, in chunks of 100 timed as
a whole, one chunk of each kind in turn, so that machine noise hits all kinds alike;
the report shows the median round of each. Unless ``--url`` is given, the server is
a private one started on 127.0.0.1 for this run only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from asynclock._aio import background_done
from asynclock._server import RedisServer

from ._kinds import BenchmarkError, Kind, build_kinds, check_clean, delete_keys

#: Upper bounds of the options, so that no typo runs for hours.
MAX_ITERATIONS = 1_000_000
MAX_ROUNDS = 101
#: Operations of one kind measured in a row, before every other kind's turn.
CHUNK = 100
#: Default limit on the whole run (server start excluded), in seconds.
DEFAULT_TIME_LIMIT = 600.0
#: How long connecting to the server, or deleting our keys at the end, may take (s).
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Row:
    """The result of one kind over all rounds.

    :ivar kind: what was measured
    :ivar rounds_us: microseconds per operation in each round, in round order
    """

    kind: Kind
    rounds_us: tuple[float, ...]

    @property
    def median_us(self) -> float:
        """Microseconds per operation in the median round (the lower one of two)."""
        return statistics.median_low(self.rounds_us)

    @property
    def per_second(self) -> float:
        """Operations per second in the median round."""
        return 1e6 / self.median_us


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the table shows.

    :ivar header: the line stating date, server, Python and CPUs
    :ivar method: the line stating how it was measured
    :ivar rows: one row per kind, in table order
    """

    header: str
    method: str
    rows: tuple[Row, ...]

    def row(self, key: str) -> Row:
        """Return the row of the kind called ``key``."""
        for row in self.rows:
            if row.kind.key == key:
                return row
        raise KeyError(key)


# --- measuring ------------------------------------------------------------------------


async def timed(kind: Kind, n: int) -> float:
    """Run ``n`` operations of ``kind``; return microseconds per operation."""
    started = time.perf_counter()
    await kind.run(n)
    elapsed = time.perf_counter() - started
    # What the last operation left running (a cancelled watchdog, a clean-up in the
    # background) finishes outside the timing, not in the next kind's.
    await asyncio.sleep(0)
    await background_done(CONNECT_TIMEOUT)
    return elapsed / n * 1e6


async def measure(kinds: Sequence[Kind], iterations: int, rounds: int) -> list[Row]:
    """Warm up, then measure every kind once per round, interleaved.

    A round runs each kind's operations in chunks of ``CHUNK``, one chunk of every kind
    in turn: the machine's speed drifts within seconds, and the kinds compared share
    its every tenth of a second rather than each having a second of its own.
    """
    warmup = min(iterations, 500)
    for kind in kinds:
        await timed(kind, warmup)
    results: dict[str, list[float]] = {kind.key: [] for kind in kinds}
    chunks = [CHUNK] * (iterations // CHUNK) + ([iterations % CHUNK] if iterations % CHUNK else [])
    for number in range(rounds):
        gc.collect()  # every round starts from the same garbage state
        started = time.perf_counter()
        spent = dict.fromkeys(results, 0.0)
        for index, chunk in enumerate(chunks):
            # Rotate the order each time, so no kind always follows the same one.
            shift = (number + index) % len(kinds)
            for kind in [*kinds[shift:], *kinds[:shift]]:
                spent[kind.key] += await timed(kind, chunk) * chunk
        for key, total in spent.items():
            results[key].append(total / iterations)
        summary = "  ".join(f"{kind.key} {results[kind.key][-1]:.1f}" for kind in kinds)
        print(
            f"round {number + 1}/{rounds}: {summary} us/op ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return [Row(kind, tuple(results[kind.key])) for kind in kinds]


# --- the report ------------------------------------------------------------------------


async def server_version(client: aioredis.Redis) -> str:
    """Return the server's name and version from ``INFO server``."""
    info = await client.info("server")
    redis_version = info.get("redis_version", "?")
    valkey_version = info.get("valkey_version")
    if valkey_version:
        return f"valkey {valkey_version} (redis_version {redis_version})"
    return f"redis {redis_version}"


async def run(url: str, where: str, iterations: int, rounds: int, time_limit: float) -> Report:
    """Measure every kind against the server at ``url``; clean up what was written."""
    if not HIREDIS_AVAILABLE:
        raise BenchmarkError("hiredis is not installed: the client would parse in Python")
    client = aioredis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    kinds: list[Kind] = []
    try:
        async with asyncio.timeout(time_limit):
            version = await server_version(client)
            kinds = await build_kinds(client, f"asynclock-bench:{secrets.token_hex(4)}")
            rows = await measure(kinds, iterations, rounds)
            await check_clean(client, kinds)
    finally:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await delete_keys(client, kinds)
        except (TimeoutError, RedisError, OSError) as exc:
            print(f"could not delete the benchmark's keys: {exc!r}", file=sys.stderr)
        await client.aclose()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"{now}; server {version}, {where}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{os.cpu_count()} CPUs"
    )
    method = (
        f"asynclock {metadata.version('asynclock')}, redis-py {metadata.version('redis')}"
        f" + hiredis {metadata.version('hiredis')}; one client, one task, sequential awaits;"
        f" {iterations} iterations x {rounds} rounds, interleaved by {CHUNK}; median round shown"
    )
    return Report(header, method, tuple(rows))


COLUMNS = ("measurement", "us/op", "ops/s", "rounds us (min-max)", "/ 2 EVALSHA", "vs redis-py")


def table_cells(report: Report) -> list[tuple[str, ...]]:
    """Return the table's rows as text cells, in the order of ``COLUMNS``."""
    two_evalsha = 2 * report.row("evalsha").median_us
    peer = report.row("redis-py").per_second
    cells: list[tuple[str, ...]] = []
    for row in report.rows:
        vs_peer = f"{row.per_second / peer:.2f}x" if row.kind.lock else "-"
        cells.append(
            (
                row.kind.label,
                f"{row.median_us:.1f}",
                f"{row.per_second:,.0f}",
                f"{min(row.rounds_us):.1f}-{max(row.rounds_us):.1f}",
                f"{row.median_us / two_evalsha:.2f}",
                vs_peer,
            )
        )
    return cells


def format_text(report: Report) -> str:
    """Return the report as a plain-text table."""
    cells = table_cells(report)
    widths = [max(len(line[i]) for line in [COLUMNS, *cells]) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        """Return one table line: the first column left-aligned, the others right."""
        first = values[0].ljust(widths[0])
        rest = (value.rjust(width) for value, width in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(line(COLUMNS))
    body = [line(row) for row in cells]
    return "\n".join([report.header, report.method, rule, line(COLUMNS), rule, *body, rule])


def format_markdown(report: Report) -> str:
    """Return the report as Markdown: the two header lines, then the table."""
    lines = [report.header + "  ", report.method, ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join([":---", *["---:"] * (len(COLUMNS) - 1)]) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_cells(report)]
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """Return an argparse type accepting integers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        """Parse ``text`` as an integer within the bounds."""
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """Parse ``text`` as a positive number of seconds, at most one day."""
    value = float(text)
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.uncontended",
        description="Uncontended asynclock lock cost against raw Redis round trips.",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="use this running server (default: start a private one on 127.0.0.1)",
    )
    parser.add_argument(
        "--iterations",
        type=bounded_int(1, MAX_ITERATIONS),
        metavar="N",
        default=3000,
        help="operations per measurement (default 3000)",
    )
    parser.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        metavar="R",
        default=5,
        help="rounds; the median round is reported (default 5)",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write the table as Markdown here"
    )
    parser.add_argument(
        "--time-limit",
        type=positive_seconds,
        metavar="SECONDS",
        default=DEFAULT_TIME_LIMIT,
        help=f"give up after this many seconds (default {DEFAULT_TIME_LIMIT:.0f})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write it as Markdown."""
    args = parse_args(argv)
    settings = (args.iterations, args.rounds, args.time_limit)
    try:
        if args.url:
            report = asyncio.run(run(args.url, "at the given --url", *settings))
        else:
            with RedisServer() as server:
                print(f"started {server.binary} on {server.url}", file=sys.stderr)
                report = asyncio.run(run(server.url, "started privately on 127.0.0.1", *settings))
    except (BenchmarkError, TimeoutError, RedisError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(format_text(report))
    if args.markdown is not None:
        try:
            args.markdown.write_text(format_markdown(report))
        except OSError as exc:
            print(f"could not write {args.markdown}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
