"""Once per tick across replicas: three processes fire the same job with skewed clocks."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples"
TICKS = 4
OFFSETS = (0.0, 0.25, 0.5)  # replica 2's trigger fires half a second after replica 0's


def run_replicas(redis_url: str, example: str, hold_at_least: float, db: int) -> dict[int, int]:
    """Run three replicas of ``example``; return how many times each tick ran."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    with redis.Redis.from_url(url) as client:
        client.delete("example:runs")
    start_at = str(int(time.time()) + 3)  # leave time for the processes to start
    replicas = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLES / example)],
            env={
                **os.environ,
                "REDIS_URL": url,
                "TICKS": str(TICKS),
                "OFFSET": str(offset),
                "HOLD_AT_LEAST": str(hold_at_least),
                "START_AT": start_at,
            },
            stdout=subprocess.DEVNULL,
        )
        for offset in OFFSETS
    ]
    for replica in replicas:
        assert replica.wait(timeout=60) == 0
    with redis.Redis.from_url(url) as client:
        runs = [entry.split()[0] for entry in client.lrange("example:runs", 0, -1)]
        client.delete("example:runs")
    return dict(collections.Counter(int(tick) for tick in runs))


@pytest.mark.parametrize("example", ["asyncio_loop_job.py", "apscheduler_job.py"])
def test_each_tick_runs_once_with_hold_at_least_and_twice_without(
    redis_url: str, example: str
) -> None:
    pytest.importorskip("apscheduler")
    with_hold = run_replicas(redis_url, example, 0.8, db=1)
    without = run_replicas(redis_url, example, 0, db=2)
    assert with_hold == dict.fromkeys(range(TICKS), 1)
    # Without it, a replica whose trigger fires later finds the short job done and the
    # lock free, and runs the same tick again.
    assert sorted(without) == list(range(TICKS))
    assert all(count > 1 for count in without.values())
