"""Several OS processes contending for one lock through the real server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import MultiLock, Mutex, Semaphore

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


def overlaps(records: list[dict[str, float]]) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Return the pairs of consecutive sections (by start) that overlap in time."""
    ordered = sorted(records, key=lambda record: record["start"])
    return [(a, b) for a, b in itertools.pairwise(ordered) if b["start"] < a["end"]]


def assert_each_name_held_alone(records: list[dict[str, Any]], names: list[str]) -> None:
    """Every name was held, never by two sections at once, with fencing tokens strictly
    increasing in the order of acquisition."""
    for name in names:
        holding = [record for record in records if name in record["fences"]]
        assert holding, name
        assert overlaps(holding) == []
        fences = [r["fences"][name] for r in sorted(holding, key=lambda r: r["start"])]
        assert fences == sorted(set(fences))


def most_at_once(records: list[dict[str, float]]) -> int:
    """Return the most sections that were running at the same moment."""
    events = sorted(
        [(record["start"], 1) for record in records] + [(record["end"], -1) for record in records]
    )  # at equal times the end (-1) sorts first: touching sections do not overlap
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def run_contenders(
    redis_url: str, tmp_path: Path, name: str, settings: list[int]
) -> list[dict[str, float]]:
    """Run three contender processes and return every section they recorded."""
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(3)]
    command = [sys.executable, str(HERE / "contender.py"), redis_url, name]
    coroutines, sections, *limit = (str(setting) for setting in settings)
    workers = [
        subprocess.Popen([*command, coroutines, sections, str(out), *limit]) for out in outputs
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    return [json.loads(line) for out in outputs for line in out.read_text().splitlines()]


def test_the_checkers_find_overlaps() -> None:
    assert overlaps([{"start": 0, "end": 2}, {"start": 1, "end": 3}])
    assert not overlaps([{"start": 0, "end": 1}, {"start": 1, "end": 3}])
    three = [{"start": 0, "end": 3}, {"start": 1, "end": 4}, {"start": 2, "end": 5}]
    assert most_at_once(three) == 3
    assert most_at_once([*three[:2], {"start": 4, "end": 5}]) == 2


def test_processes_never_overlap_and_fencing_tokens_increase(
    redis_url: str, tmp_path: Path
) -> None:
    records = run_contenders(redis_url, tmp_path, "procs", [4, 15])
    assert len(records) == 3 * 4 * 15
    assert overlaps(records) == []
    fences = [record["fence"] for record in sorted(records, key=lambda r: r["start"])]
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


def test_multilocks_across_processes_never_overlap_on_any_name(
    redis_url: str, tmp_path: Path
) -> None:
    names = ["m1", "m2", "m3", "m4"]
    records = run_contenders(redis_url, tmp_path, ",".join(names), [6, 10])
    assert len(records) == 3 * 6 * 10
    assert_each_name_held_alone(records, names)


def test_a_semaphore_never_has_more_holders_than_its_limit(redis_url: str, tmp_path: Path) -> None:
    records = run_contenders(redis_url, tmp_path, "sem", [10, 8, 3])
    assert len(records) == 3 * 10 * 8
    assert most_at_once(records) == 3  # reached, never passed
    assert len({record["fence"] for record in records}) == len(records)


async def start_holder(redis_url: str, name: str, ttl: float, *limit: str) -> Process:
    """Start holder.py and wait until it holds the lock."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "holder.py"), redis_url, name, str(ttl), *limit,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    line = await asyncio.wait_for(holder.stdout.readline(), 30)
    assert line.strip() == b"held"
    return holder


async def kill(holder: Process) -> float:
    """SIGKILL the holder; return when it died, on time.monotonic()."""
    os.kill(holder.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.wait_for(holder.wait(), 10)
    return killed


async def test_a_killed_holders_lock_is_taken_after_its_ttl(redis_url: str) -> None:
    ttl = 1.0
    holder = await start_holder(redis_url, "killed", ttl)
    killed = await kill(holder)
    client = redis.Redis.from_url(redis_url)
    async with Mutex(client, "killed", ttl=5, timeout=10):
        waited = time.monotonic() - killed
    await client.aclose()
    # Not before the dead holder's lease ran out, and soon after it.
    assert ttl * 0.5 < waited < ttl + 0.5


async def test_a_killed_semaphore_holders_permit_returns_after_its_ttl(redis_url: str) -> None:
    ttl = 1.0
    client = redis.Redis.from_url(redis_url)
    survivor = Semaphore(client, "killed-sem", limit=2, ttl=5)
    assert await survivor.acquire(blocking=False)
    holder = await start_holder(redis_url, "killed-sem", ttl, "2")
    assert await survivor.holders() == 2
    killed = await kill(holder)
    async with Semaphore(client, "killed-sem", limit=2, ttl=5, timeout=10):
        waited = time.monotonic() - killed
        # The dead holder's permit came back; the live holder kept its own.
        assert survivor.owned
        assert await survivor.holders() == 2
    await survivor.release()
    await client.aclose()
    assert ttl * 0.5 < waited < ttl + 0.5


async def test_a_killed_multilock_holders_names_are_taken_after_its_ttl(redis_url: str) -> None:
    ttl = 1.0
    holder = await start_holder(redis_url, "k1,k2", ttl)
    killed = await kill(holder)
    client = redis.Redis.from_url(redis_url)
    async with Mutex(client, "k2", ttl=5, timeout=10):
        waited = time.monotonic() - killed
    async with MultiLock(client, ["k1", "k2"], ttl=5, blocking=False):
        pass
    await client.aclose()
    assert ttl * 0.5 < waited < ttl + 0.5
