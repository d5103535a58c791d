"""``python -m asynclock demo``: worker processes contending for a few named locks.

Each worker process runs several coroutines; each coroutine repeatedly picks a lock
name at random, enters ``Mutex(backend, name)``, does a few milliseconds of "work"
and records when its section started and ended (on ``time.monotonic()``, one clock
for every process of the machine) with its fencing token. One section per run
outlives the TTL on purpose, to show auto-extend keeping it. At the end the parent
checks every lock's sections for overlaps and fencing tokens for order.

The store is any URL ``connect`` takes. On ``memory://`` nothing is shared between
processes, so the workers run as groups of coroutines in this one process instead
(and the demo says so).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import queue
import random
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TextIO

from ._backend import Backend
from ._connect import connect, redacted
from ._mutex import Mutex
from ._server import RedisServer


@dataclass(frozen=True, slots=True)
class Section:
    """One critical section as a worker saw it."""

    worker: int
    name: str
    waited: float
    start: float
    end: float
    fence: int


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """What the workers do."""

    url: str
    workers: int
    tasks: int
    locks: int
    seconds: float
    ttl: float


#: The job every worker's scheduler fires once; one runs it, the others skip.
REPORT = "demo:nightly-report"


def lock_names(count: int) -> list[str]:
    """The names the workers contend for."""
    return [f"demo:job-{n}" for n in range(count)]


async def _run_worker(
    worker: int, settings: DemoSettings, progress: Any, shared: Backend | None = None
) -> tuple[list[Section], int]:
    client = shared or await connect(settings.url)
    names = lock_names(settings.locks)
    sections: list[Section] = []
    skipped: list[int] = []
    stop_at = time.monotonic() + settings.seconds

    async def contend(task: int) -> None:
        if task == 0:
            await nightly_report()
        while time.monotonic() < stop_at:
            name = random.choice(names)
            asked = time.monotonic()
            async with Mutex(client, name, ttl=settings.ttl, timeout=30) as lease:
                start = time.monotonic()
                await asyncio.sleep(random.uniform(0.001, 0.005))
                end = time.monotonic()
            sections.append(Section(worker, name, start - asked, start, end, lease.fencing_token))

    async def nightly_report() -> None:
        # The scheduled-job pattern: every worker fires the same job; whoever gets the
        # lock runs it, for longer than the TTL (auto-extend keeps it), the rest skip.
        lock = Mutex(client, REPORT, ttl=settings.ttl, blocking=False)
        asked = time.monotonic()
        if not await lock.acquire():
            skipped.append(worker)
            return
        start = time.monotonic()
        await asyncio.sleep(settings.ttl * 1.5)
        end = time.monotonic()
        fence = lock.fencing_token
        await lock.release()
        sections.append(Section(worker, REPORT, start - asked, start, end, fence))

    async def report() -> None:
        while True:
            progress.put(("progress", worker, len(sections)))
            await asyncio.sleep(0.25)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(contend(task) for task in range(settings.tasks)))
    finally:
        reporter.cancel()
        if shared is None:
            await client.aclose()
    return sections, len(skipped)


def _worker_process(worker: int, settings: DemoSettings, progress: Any) -> None:
    """The body of one worker process (module level, so ``spawn`` can import it)."""
    try:
        progress.put(("done", worker, asyncio.run(_run_worker(worker, settings, progress))))
    except BaseException as exc:
        progress.put(("failed", worker, repr(exc)))
        raise


def _by_name(sections: list[Section]) -> list[list[Section]]:
    """Group sections by lock name, each group in the order the sections started."""
    groups: dict[str, list[Section]] = {}
    for section in sections:
        groups.setdefault(section.name, []).append(section)
    return [sorted(group, key=lambda section: section.start) for group in groups.values()]


def find_overlaps(sections: list[Section]) -> int:
    """Count sections that started before an earlier section of the same name ended."""
    found = 0
    for group in _by_name(sections):
        latest_end = float("-inf")
        for section in group:
            if section.start < latest_end:
                found += 1
            latest_end = max(latest_end, section.end)
    return found


def fences_in_order(sections: list[Section]) -> bool:
    """Whether, per name, fencing tokens increase in the order sections started."""
    return all(
        b.fence > a.fence for group in _by_name(sections) for a, b in itertools.pairwise(group)
    )


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(sections: list[Section], skips: int, settings: DemoSettings) -> tuple[str, bool]:
    """Return the summary table and whether the run was correct."""
    lines = [
        f"{'worker':>8} {'sections':>9} {'wait p50':>10} {'wait p99':>10} {'wait max':>10}",
    ]

    def row(label: str, group: list[Section]) -> str:
        waits = [section.waited * 1000 for section in group]
        return (
            f"{label:>8} {len(group):>9} {_percentile(waits, 0.5):>8.1f}ms "
            f"{_percentile(waits, 0.99):>8.1f}ms {max(waits, default=0):>8.1f}ms"
        )

    for worker in range(settings.workers):
        lines.append(row(str(worker), [s for s in sections if s.worker == worker]))
    lines.append(row("all", sections))
    overlaps = find_overlaps(sections)
    ordered = fences_in_order(sections)
    reports = [section for section in sections if section.name == REPORT]
    longest = max((section.end - section.start for section in reports), default=0.0)
    lines.append("")
    lines.append(f"{REPORT}: run {len(reports)} time(s) for {longest:.2f} s, longer than its "
                 f"{settings.ttl:g} s TTL (auto-extend); skipped by {skips} worker(s)")  # fmt: skip
    lines.append(f"overlaps: {overlaps}   fencing tokens increasing per lock: "
                 f"{'yes' if ordered else 'NO'}")  # fmt: skip
    return "\n".join(lines), overlaps == 0 and ordered and bool(sections)


def _in_this_process(settings: DemoSettings, progress: Any) -> None:
    """Every worker as a group of coroutines of this process, on one memory backend."""

    async def run_all() -> None:
        async with await connect(settings.url) as backend:
            results = await asyncio.gather(
                *(_run_worker(w, settings, progress, backend) for w in range(settings.workers)),
                return_exceptions=True,
            )
        for worker, result in enumerate(results):
            if isinstance(result, BaseException):
                progress.put(("failed", worker, repr(result)))
            else:
                progress.put(("done", worker, result))

    asyncio.run(run_all())


def run_demo(settings: DemoSettings, out: TextIO = sys.stdout) -> bool:
    """Run the workers, show progress, print the summary; return whether it was correct."""
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    processes = []
    if settings.url.startswith("memory:"):
        thread = threading.Thread(target=_in_this_process, args=(settings, progress), daemon=True)
        thread.start()
    else:
        processes = [
            context.Process(target=_worker_process, args=(worker, settings, progress), daemon=True)
            for worker in range(settings.workers)
        ]
        for process in processes:
            process.start()
    counts = [0] * settings.workers
    results: dict[int, tuple[list[Section], int]] = {}
    failures: list[str] = []
    started = time.monotonic()
    give_up_at = started + settings.seconds + 60
    last_line = 0.0
    interactive = out.isatty()
    while len(results) + len(failures) < settings.workers and time.monotonic() < give_up_at:
        try:
            kind, worker, payload = progress.get(timeout=0.2)
        except queue.Empty:
            kind = ""
        if kind == "progress":
            counts[worker] = payload
        elif kind == "done":
            results[worker] = payload
            counts[worker] = len(payload[0])
        elif kind == "failed":
            failures.append(f"worker {worker}: {payload}")
        now = time.monotonic()
        if now - last_line >= (0.25 if interactive else 1.0):
            last_line = now
            line = (
                f"[{now - started:5.1f}s] sections "
                + "  ".join(f"w{n}:{count}" for n, count in enumerate(counts))
                + f"  total:{sum(counts)}"
            )
            print("\r" + line if interactive else line, end="" if interactive else "\n",
                  file=out, flush=True)  # fmt: skip
    if interactive:
        print(file=out)
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    for failure in failures:
        print(f"FAILED {failure}", file=out)
    if len(results) < settings.workers:
        print("not every worker finished", file=out)
        return False
    sections = [section for worker in sorted(results) for section in results[worker][0]]
    skips = sum(skipped for _, skipped in results.values())
    table, correct = summary(sections, skips, settings)
    print(table, file=out)
    return correct and not failures


def main(argv: list[str] | None = None) -> int:
    """Parse the demo's arguments and run it; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m asynclock demo",
        description="Worker processes contending for a few named locks; overlaps must be 0.",
    )
    parser.add_argument(
        "--url",
        help="the store: redis://..., postgresql://... or memory:// (workers then run in"
        " this one process: memory excludes nothing across processes); default: start"
        " a private Redis-compatible server",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--tasks", type=int, default=4, help="coroutines per worker (default 4)")
    parser.add_argument("--locks", type=int, default=3, help="lock names (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="run time (default 5)")
    parser.add_argument("--ttl", type=float, default=1.0, help="lease TTL in s (default 1)")
    args = parser.parse_args(argv)
    for option in ("workers", "tasks", "locks"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be between 0 and 600")
    with ExitStack() as stack:
        url = args.url
        if url is None:
            server = stack.enter_context(RedisServer())
            print(f"started {os.path.basename(server.binary)} on 127.0.0.1:{server.port}")
            url = server.url
        settings = DemoSettings(url, args.workers, args.tasks, args.locks, args.seconds, args.ttl)
        where = "in this one process" if url.startswith("memory:") else "processes"
        print(f"{settings.workers} workers ({where}) x {settings.tasks} coroutines "
              f"contending for {settings.locks} locks for {settings.seconds:g} s"
              f" on {redacted(url)}")  # fmt: skip
        if url.startswith("memory:"):
            print("memory:// keeps locks inside one process: they exclude nothing across"
                  " processes, so the workers run here as groups of coroutines")  # fmt: skip
        return 0 if run_demo(settings) else 1
    return 1  # pragma: no cover  (ExitStack does not swallow exceptions)
