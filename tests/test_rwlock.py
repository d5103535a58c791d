"""``ReadWriteLock`` on the real server: readers share, a writer is alone, waiting
writers keep out later readers, crashed readers expire alone, fencing, loss, and a
history checker across processes."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import LockError, LockLost, ReadWriteLock, _scripts
from asynclock._names import PLACE_MS

from .conftest import cancel_at_random_turns

HERE = Path(__file__).parent
KEYS = "asynclock:rwlock:{catalog}"


async def line_holds(client: redis.Redis, places: int) -> None:
    """Wait until ``places`` processes stand in the lock's line (at most 10 s): a
    waiter that came has been refused, and waits its turn."""
    deadline = time.monotonic() + 10
    while await client.zcard(f"{KEYS}:line") < places:
        assert time.monotonic() < deadline, f"fewer than {places} places in line"
        await asyncio.sleep(0.01)


async def test_readers_share_and_a_writer_is_alone(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rw, other = ReadWriteLock(client, "catalog", ttl=5), ReadWriteLock(make_client(), "catalog")
    async with rw.read(), other.read():  # two readers at once
        assert await rw.readers() == 2
        assert not await other.write().acquire(blocking=False)
    async with rw.write():
        assert await rw.writing()
        assert not await other.read().acquire(blocking=False)
        assert not await other.write().acquire(blocking=False)
    assert (await rw.readers(), await rw.writing()) == (0, False)


async def test_a_waiting_writer_keeps_out_later_readers_and_gets_in(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=5)
    writer_side = ReadWriteLock(make_client(), "catalog", ttl=5).write()
    late = ReadWriteLock(make_client(), "catalog", ttl=5).read()
    async with rw.read():
        writing = asyncio.create_task(writer_side.acquire())
        await line_holds(client, 1)
        assert not writing.done()
        assert await rw.writers_waiting() == 1
        assert not await late.acquire(blocking=False)  # it would pass the writer
        reading = asyncio.create_task(late.acquire())
        await line_holds(client, 2)
        assert not reading.done()
    released = time.monotonic()
    assert await asyncio.wait_for(writing, 5)
    assert time.monotonic() - released < 0.5  # woken by the release
    assert not reading.done()  # behind the writer
    released = time.monotonic()
    await writer_side.release()
    assert await asyncio.wait_for(reading, 5)
    assert time.monotonic() - released < 0.5  # woken by the writer's release
    await late.release()


async def test_waiters_of_either_side_are_woken_by_the_release_they_wait_for(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    # A waiter also re-checks every 0.25 s: a release found that way comes 0 to 250 ms
    # after it (125 ms on average). Woken by its notification, a few milliseconds.
    holder_client, waiter_client = make_client(), make_client()
    took: dict[str, list[float]] = {"read": [], "write": []}
    for round_ in range(20):
        waits = "read" if round_ % 2 else "write"
        holder = ReadWriteLock(holder_client, "catalog", ttl=5)
        held = holder.write() if waits == "read" else holder.read()
        assert await held.acquire()
        waiter = ReadWriteLock(waiter_client, "catalog", ttl=5)
        side = waiter.read() if waits == "read" else waiter.write()
        waiting = asyncio.create_task(side.acquire())
        await line_holds(client, 1)
        await asyncio.sleep(0.01)
        released = time.monotonic()
        await held.release()
        assert await asyncio.wait_for(waiting, 5)
        took[waits].append(time.monotonic() - released)
        await side.release()
    for waits, seconds in took.items():
        print(f"{waits}: woken {statistics.median(seconds) * 1000:.1f} ms after the release")
        assert statistics.median(seconds) < 0.05, (waits, seconds)


async def test_readers_that_waited_before_a_writer_go_first(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    holder = ReadWriteLock(client, "catalog", ttl=5).write()
    assert await holder.acquire()
    order: list[str] = []

    async def enter(side: Any, label: str) -> None:
        async with side:
            order.append(label)
            await asyncio.sleep(0.05)

    early_reader = asyncio.create_task(
        enter(ReadWriteLock(make_client(), "catalog", ttl=5).read(), "early reader")
    )
    await line_holds(client, 1)
    writer = asyncio.create_task(
        enter(ReadWriteLock(make_client(), "catalog", ttl=5).write(), "writer")
    )
    await line_holds(client, 2)
    late_reader = asyncio.create_task(
        enter(ReadWriteLock(make_client(), "catalog", ttl=5).read(), "late reader")
    )
    await line_holds(client, 3)
    await holder.release()
    await asyncio.wait_for(asyncio.gather(early_reader, writer, late_reader), 10)
    assert order == ["early reader", "writer", "late reader"]


async def test_readers_of_one_process_waiting_before_a_writer_all_go_first(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    holder = ReadWriteLock(client, "catalog", ttl=5).write()
    assert await holder.acquire()
    order: list[str] = []
    readers_process = ReadWriteLock(make_client(), "catalog", ttl=5)

    async def enter(side: Any, label: str) -> None:
        async with side:
            order.append(label)
            await asyncio.sleep(0.1)

    # Two readers of one process wait, then a writer of another process comes.
    readers = [asyncio.create_task(enter(readers_process.read(), f"reader {n}")) for n in (1, 2)]
    await line_holds(client, 1)
    await asyncio.sleep(0.05)  # the second reader queued behind the first, in its process
    writer = asyncio.create_task(
        enter(ReadWriteLock(make_client(), "catalog", ttl=5).write(), "writer")
    )
    await line_holds(client, 2)
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*readers, writer), 10)
    assert order == ["reader 1", "reader 2", "writer"]


async def test_a_task_holding_one_side_is_refused_the_other_instead_of_waiting_for_itself(
    client: redis.Redis,
) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=5)
    async with rw.write():
        with pytest.raises(LockError, match="would wait for itself"):
            await ReadWriteLock(client, "catalog").read().acquire()
    async with rw.read():
        with pytest.raises(LockError, match="would wait for itself"):
            await ReadWriteLock(client, "catalog").write().acquire()
        async with ReadWriteLock(client, "catalog").read():  # reading twice is fine
            pass


async def test_a_retried_read_acquire_keeps_the_readers_for_its_whole_lease(
    client: redis.Redis,
) -> None:
    side = ReadWriteLock(client, "catalog").read()._resource
    keys = side.keys[:7]  # type: ignore[attr-defined]
    assert int((await _scripts.RW_ACQUIRE(client, keys, ("r1", 400, "r", "", "", 0)))[0]) == 1
    await asyncio.sleep(0.2)
    # The same acquire sent again (its reply lost), with the lease counted from now.
    assert int((await _scripts.RW_ACQUIRE(client, keys, ("r1", 1000, "r", "", "", 0)))[0]) == 1
    await asyncio.sleep(0.4)  # past the first try's lease, within the second's
    writer = ReadWriteLock(client, "catalog").write()
    assert not await writer.acquire(blocking=False)  # the reader still holds


async def test_thousands_of_expired_readers_are_purged_at_once(client: redis.Redis) -> None:
    side = ReadWriteLock(client, "catalog").read()._resource
    readers, fences = side.keys[1], side.keys[2]  # type: ignore[attr-defined]
    await client.zadd(readers, {f"gone-{n}": 1 for n in range(10_000)})  # long expired
    await client.hset(fences, mapping={f"gone-{n}": 0 for n in range(10_000)})
    rw = ReadWriteLock(client, "catalog", ttl=5)
    async with rw.write():
        assert await client.hlen(fences) == 0


async def test_a_crashed_reader_frees_its_share_after_its_ttl_alone(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=5)
    side = rw.read()._resource
    # A reader that crashed: taken by the script alone, nobody extending it.
    reply = await _scripts.RW_ACQUIRE(client, side.keys[:7], ("crashed", 300, "r", "", "", 0))  # type: ignore[attr-defined]
    assert int(reply[0]) == 1
    async with rw.read():
        assert await rw.readers() == 2
        await asyncio.sleep(0.4)
        assert await rw.readers() == 1  # the crashed one expired; this one holds on
        writer = ReadWriteLock(make_client(), "catalog").write()
        assert not await writer.acquire(blocking=False)
    assert await writer.acquire(blocking=False)
    await writer.release()


async def test_writes_get_new_fences_and_reads_the_last_writes(client: redis.Redis) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=5)
    async with rw.read() as before:
        assert before.fencing_token == 0  # nothing written yet
    fences = []
    for _ in range(3):
        async with rw.write() as write:
            fences.append(write.fencing_token)
        async with rw.read() as read:
            assert read.fencing_token == write.fencing_token
    assert fences == sorted(set(fences))


@pytest.mark.parametrize("kind", ["read", "write"])
async def test_a_lost_lease_cancels_the_body_with_lock_lost(client: redis.Redis, kind: str) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=1)
    side = rw.read() if kind == "read" else rw.write()
    with pytest.raises(LockLost):
        async with side:
            await client.delete(f"{KEYS}:readers", f"{KEYS}:writer")
            await asyncio.sleep(5)


async def test_a_waiter_that_gives_up_leaves_the_line_and_wakes_those_behind(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    reader = ReadWriteLock(client, "catalog", ttl=5).read()
    assert await reader.acquire()
    impatient = ReadWriteLock(make_client(), "catalog", ttl=5).write()
    assert not await impatient.acquire(timeout=0.2)  # stood in line, then left it
    await asyncio.sleep(0.1)  # its place is given up in the background
    assert await ReadWriteLock(client, "catalog").writers_waiting() == 0
    late = ReadWriteLock(make_client(), "catalog", ttl=5).read()
    assert await late.acquire(blocking=False)  # nobody waits to write: in
    await late.release()
    await reader.release()


async def test_a_waiting_writer_that_crashed_lapses_out_of_the_line(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rw = ReadWriteLock(client, "catalog", ttl=5)
    side = rw.write()._resource
    async with rw.read():
        # A writer process that stood in line and crashed: its place is not renewed.
        args = ("crashed", 5000, "w", "gone-process", "", 300)
        assert int((await _scripts.RW_ACQUIRE(client, side.keys[:7], args))[0]) == 0  # type: ignore[attr-defined]
        late = ReadWriteLock(make_client(), "catalog").read()
        assert not await late.acquire(blocking=False)
        await asyncio.sleep(0.4)
        assert await late.acquire(blocking=False)  # the place lapsed
        await late.release()
    assert PLACE_MS >= 1000  # live waiters renew theirs far more often


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"blocking": "yes"}, TypeError),
        ({"replicas": -1}, ValueError),
        ({"prefix": "a{b"}, ValueError),
    ],
)
def test_bad_input_is_refused_before_any_command(options: dict[str, Any], error: type) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)  # any command would fail
    with pytest.raises(error):
        ReadWriteLock(unreachable, "catalog", **options)
    with pytest.raises(TypeError):
        ReadWriteLock(unreachable, 7)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["read", "write"])
async def test_cancelled_acquires_leave_nothing_held(client: redis.Redis, kind: str) -> None:
    rw = ReadWriteLock(client, "storm", ttl=5)

    async def nothing_held() -> None:
        await asyncio.sleep(0.01)  # a clean-up in the background has run
        assert (await rw.readers(), await rw.writing()) == (0, False)

    def make() -> Any:
        fresh = ReadWriteLock(client, "storm", ttl=5)
        return fresh.read() if kind == "read" else fresh.write()

    cancelled, acquired = await cancel_at_random_turns(make, seed=19, after_cancel=nothing_held)
    assert cancelled >= 20
    assert acquired >= 20


def check_history(records: list[dict[str, Any]]) -> int:
    """Assert that no write overlapped any other section and that write fences
    increase; return how many pairs of reads overlapped."""
    records = sorted(records, key=lambda r: r["start"])
    shared = 0
    for n, first in enumerate(records):
        for second in records[n + 1 :]:
            if second["start"] >= first["end"]:
                break
            assert first["kind"] == second["kind"] == "read", (first, second)
            shared += 1
    writes = [r["fence"] for r in records if r["kind"] == "write"]
    assert writes == sorted(set(writes))
    return shared


def run_workers(redis_url: str, tmp_path: Path, roles: list[str], seconds: float) -> list[Any]:
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(len(roles))]
    command = [sys.executable, str(HERE / "rwlock_worker.py"), redis_url, "catalog", str(seconds)]
    workers = [
        subprocess.Popen([*command, role, str(out)])
        for role, out in zip(roles, outputs, strict=True)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    return [json.loads(line) for out in outputs for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_processes_mixing_reads_and_writes_never_let_a_writer_in_with_anyone(
    redis_url: str, tmp_path: Path
) -> None:
    records = run_workers(redis_url, tmp_path, ["mix"] * 3, 4)
    writes = sum(r["kind"] == "write" for r in records)
    shared = check_history(records)
    print(f"{len(records)} sections ({writes} writes), {shared} overlapping pairs of reads")
    assert writes > 10
    assert shared > 10  # readers did share


@pytest.mark.slow
def test_a_writer_gets_in_within_a_bound_under_a_stream_of_readers(
    redis_url: str, tmp_path: Path
) -> None:
    records = run_workers(redis_url, tmp_path, ["readers", "readers", "writer"], 5)
    check_history(records)
    waits = [r["waited"] for r in records if r["kind"] == "write"]
    reads = sum(r["kind"] == "read" for r in records)
    print(f"{reads} reads; writes waited {', '.join(f'{w * 1000:.0f}' for w in waits)} ms")
    assert len(waits) >= 5
    # The readers in when the writer came hold 100 ms at most; the bound allows for
    # a loaded machine.
    assert max(waits) < 1.0
