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
from pathlib import Path

import pytest
import redis.asyncio as redis

from asynclock import Mutex

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


def overlaps(records: list[dict[str, float]]) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Return the pairs of consecutive sections (by start) that overlap in time."""
    ordered = sorted(records, key=lambda record: record["start"])
    return [(a, b) for a, b in itertools.pairwise(ordered) if b["start"] < a["end"]]


def test_the_overlap_checker_finds_overlaps() -> None:
    assert overlaps([{"start": 0, "end": 2}, {"start": 1, "end": 3}])
    assert not overlaps([{"start": 0, "end": 1}, {"start": 1, "end": 3}])


def test_processes_never_overlap_and_fencing_tokens_increase(
    redis_url: str, tmp_path: Path
) -> None:
    processes, coroutines, sections = 3, 4, 15
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(processes)]
    command = [sys.executable, str(HERE / "contender.py"), redis_url, "procs"]
    settings = [str(coroutines), str(sections)]
    workers = [subprocess.Popen([*command, *settings, str(out)]) for out in outputs]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    assert len(records) == processes * coroutines * sections
    assert overlaps(records) == []
    fences = [record["fence"] for record in sorted(records, key=lambda r: r["start"])]
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


async def test_a_killed_holders_lock_is_taken_after_its_ttl(redis_url: str) -> None:
    ttl = 1.0
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "holder.py"), redis_url, "killed", str(ttl),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.strip() == b"held"
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        await asyncio.wait_for(holder.wait(), 10)
    client = redis.Redis.from_url(redis_url)
    async with Mutex(client, "killed", ttl=5, timeout=10):
        waited = time.monotonic() - killed
    await client.aclose()
    # Not before the dead holder's lease ran out, and soon after it.
    assert ttl * 0.5 < waited < ttl + 0.5
