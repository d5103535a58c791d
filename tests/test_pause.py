"""A holder frozen (SIGSTOP) past its TTL: another takes the lock, fencing stops the late write."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as redis

from asynclock import LockLost, Mutex

from .fenced_storage import FencedStorage

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


async def test_a_frozen_holder_loses_the_lock_and_its_late_write_is_refused(
    redis_url: str,
) -> None:
    ttl = 1.0
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "paused_holder.py"), redis_url, "frozen", str(ttl),
        stdout=subprocess.PIPE, cwd=HERE,
    )  # fmt: skip
    assert holder.stdout is not None
    try:
        first = (await asyncio.wait_for(holder.stdout.readline(), 30)).split()
        assert first[0] == b"held"
        os.kill(holder.pid, signal.SIGSTOP)  # a GC pause, a frozen VM
        stopped = time.monotonic()
        client = redis.Redis.from_url(redis_url)
        async with Mutex(client, "frozen", ttl=5, timeout=10) as lease:
            taken_after = time.monotonic() - stopped
            assert lease.fencing_token > int(first[1])
            storage = FencedStorage(redis_url, "frozen")
            assert storage.write("from the new holder", lease.fencing_token)
            await asyncio.sleep(max(0.0, 2 * ttl - (time.monotonic() - stopped)))
            os.kill(holder.pid, signal.SIGCONT)
            resumed = time.monotonic()
            write = await asyncio.wait_for(holder.stdout.readline(), 10)
            lost = await asyncio.wait_for(holder.stdout.readline(), 10)
            lost_after = time.monotonic() - resumed
            assert write.strip() == b"write rejected"
            assert storage.value() == b"from the new holder"
        await client.aclose()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        await asyncio.wait_for(holder.wait(), 10)
    # Its own deadline had passed: lost on the client's clock, not by asking Redis.
    assert lost.startswith(b"lost: the lease ran out")
    assert taken_after < ttl + 1.0  # the frozen holder's lease ran out on the server
    assert lost_after < 1.0  # the resumed holder learns at once: its deadline had passed


async def test_after_a_blocked_loop_the_body_completes_at_most_one_more_await(
    client: redis.Redis,
) -> None:
    # What README promises, exactly: the lease knows at once that it is lost; the
    # body, resuming, may complete one more await (its wake-up was queued before the
    # watchdog's timer), and the cancellation lands at the await after that.
    for trial in range(5):
        completed: list[int] = []
        with pytest.raises(LockLost):
            async with Mutex(client, f"blocked:{trial}", ttl=0.2) as lease:
                time.sleep(0.3)  # noqa: ASYNC251 - the event loop is blocked past the TTL
                assert not lease.owned  # known at once, from the lease's own deadline
                for step in range(10):
                    await asyncio.sleep(0)
                    completed.append(step)
        assert len(completed) <= 1, completed
