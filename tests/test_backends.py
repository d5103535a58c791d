"""One conformance suite: the promises of the primitives, on every backend.

Each test runs on Redis (the test server), on PostgreSQL (the session's server) and in
memory (:class:`MemoryBackend`), and must pass the same way on each. What a backend
cannot promise is marked where it is asked: memory excludes nothing across processes
(the process tests run on Redis in ``test_processes.py``, on PostgreSQL in
``test_postgres.py``). Backend-specific tests stay apart: Redis faults in
``test_faults.py``, PostgreSQL's in ``test_postgres.py``, memory's own in
``test_memory.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import (
    Backend,
    Election,
    LimitMismatch,
    LockEvent,
    LockLost,
    LockNotOwned,
    MemoryBackend,
    MultiLock,
    Mutex,
    ReadWriteLock,
    Semaphore,
    SingleFlight,
    locked,
    subscribe,
)
from asynclock.postgres import PostgresBackend

from .conftest import cancel_at_random_turns, empty_postgres
from .test_processes import overlaps, run_contenders

BACKENDS = ["redis", "postgres", "memory"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """What a primitive is given as its client, on each backend."""
    if request.param == "memory":
        yield MemoryBackend()
        return
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        await empty_postgres(url)
        backend = await PostgresBackend.connect(url)
        try:
            yield backend
        finally:
            await backend.aclose()
        return
    client = redis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


class Overlap:
    """Counts the holders inside a section at once: never more than ``limit``."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self.inside = 0
        self.most = 0
        self.entries = 0

    async def section(self, pause: float = 0.002) -> None:
        self.inside += 1
        self.entries += 1
        self.most = max(self.most, self.inside)
        try:
            await asyncio.sleep(pause)
        finally:
            self.inside -= 1


async def test_one_holder_at_a_time_and_fencing_tokens_increase(store: Any) -> None:
    started_us = time.time_ns() // 1000 - 1_000_000  # a second of leeway between clocks
    overlap = Overlap()
    tokens: list[int] = []

    async def worker() -> None:
        for _ in range(5):
            async with Mutex(store, "job", ttl=5.0) as lease:
                tokens.append(lease.fencing_token)
                await overlap.section()

    await asyncio.gather(*(worker() for _ in range(8)))
    assert overlap.entries == 40
    assert overlap.most == 1
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 40
    # Never below the store's clock in microseconds (the same machine's, here): tokens
    # keep increasing when a restart, a failover or a move between stores resets the
    # counter.
    assert tokens[0] >= started_us


async def test_a_lease_not_extended_expires_and_another_takes_the_lock(store: Any) -> None:
    first = Mutex(store, "ttl", ttl=0.2, auto_extend=False)
    assert await first.acquire()
    started = time.monotonic()
    second = Mutex(store, "ttl", ttl=5.0, timeout=3.0)
    assert await second.acquire()
    assert 0.1 < time.monotonic() - started < 2.5
    assert second.fencing_token > first.fencing_token
    with pytest.raises(LockNotOwned):
        await first.release()
    await second.release()


async def test_a_lost_lease_cancels_the_body_and_raises_lock_lost(store: Any) -> None:
    body_cancelled = False
    with pytest.raises(LockLost):
        async with Mutex(store, "lost", ttl=0.2, auto_extend=False):
            try:
                await asyncio.sleep(3)
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert body_cancelled
    assert await Mutex(store, "lost", blocking=False).acquire()


async def test_auto_extend_holds_past_the_ttl(store: Any) -> None:
    async with Mutex(store, "long", ttl=0.3) as lease:
        await asyncio.sleep(0.8)
        assert not await Mutex(store, "long", blocking=False).acquire()
        assert lease.extensions >= 2
    assert not await Mutex(store, "long").locked()


async def test_a_cancellation_storm_leaves_nothing_held(store: Any) -> None:
    holder = Mutex(store, "storm", ttl=5.0)

    async def still_free() -> None:
        assert not await holder.locked()

    cancelled, acquired = await cancel_at_random_turns(
        lambda: Mutex(store, "storm", ttl=5.0), seed=7, after_cancel=still_free
    )
    assert cancelled >= 20
    assert acquired >= 20
    assert await holder.acquire(blocking=False)
    await holder.release()


async def test_cancelled_waiters_leave_the_line_and_the_next_one_gets_the_lock(
    store: Any,
) -> None:
    holder = Mutex(store, "line", ttl=5.0)
    assert await holder.acquire()
    waiters = [asyncio.create_task(Mutex(store, "line").acquire()) for _ in range(5)]
    await asyncio.sleep(0.1)
    for waiter in waiters[:4]:
        waiter.cancel()
    await holder.release()
    assert await asyncio.wait_for(waiters[4], 5.0)
    assert all(waiter.cancelled() for waiter in waiters[:4])


async def test_waiters_of_one_process_get_the_lock_in_order_of_arrival(store: Any) -> None:
    holder = Mutex(store, "fifo", ttl=5.0)
    assert await holder.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with Mutex(store, "fifo", ttl=5.0):
            order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.02)  # each one queued before the next comes
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
    assert order == list(range(6))


async def test_a_contended_lock_is_handed_over_inside_the_process(store: Any) -> None:
    lock = Mutex(store, "hand", ttl=5.0)

    async def worker() -> None:
        for _ in range(10):
            async with lock:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(4)))
    stats = lock.statistics()
    assert stats.acquisitions == 40
    assert stats.hand_overs > 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": "1"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"extend_interval": 5.0, "ttl": 1.0}, ValueError),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    options: dict[str, Any], error: type[Exception]
) -> None:
    for store in (MemoryBackend(), redis.Redis(port=1)):  # nothing listens on port 1
        with pytest.raises(error):
            Mutex(store, "x", **options)
        with pytest.raises(ValueError, match="name"):
            Mutex(store, "")
        with pytest.raises(ValueError, match="must not exceed"):
            Semaphore(store, "s", limit=2, permits=3)


async def test_the_lifecycle_emits_its_events(store: Any) -> None:
    seen: list[LockEvent] = []
    unsubscribe = subscribe(seen.append)
    try:
        async with Mutex(store, "events", ttl=5.0) as lease:
            token = lease.token
    finally:
        unsubscribe()
    names = [event.event for event in seen if event.token == token]
    assert names == ["lock_requested", "lock_acquired", "lock_released"]
    assert all(event.lock == "events" and event.key for event in seen)


async def test_a_semaphore_admits_its_limit_and_each_holder_expires_alone(store: Any) -> None:
    overlap = Overlap(limit=3)

    async def worker() -> None:
        for _ in range(3):
            async with Semaphore(store, "pool", limit=3, ttl=5.0):
                await overlap.section(0.01)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert overlap.most == 3
    stale = Semaphore(store, "pool", limit=3, ttl=0.2, auto_extend=False)
    live = Semaphore(store, "pool", limit=3, ttl=5.0)
    assert await stale.acquire()
    assert await live.acquire()
    assert await live.in_use() == 2
    await asyncio.sleep(0.4)
    assert await live.in_use() == 1  # the stale holder expired, the live one stays
    with pytest.raises(LimitMismatch):
        await Semaphore(store, "pool", limit=4).acquire()
    await live.release()


async def test_a_multilock_takes_every_name_or_none(store: Any) -> None:
    blocker = Mutex(store, "b", ttl=5.0)
    assert await blocker.acquire()
    both = MultiLock(store, ["a", "b"], ttl=5.0)
    assert not await both.acquire(blocking=False)
    alone = Mutex(store, "a", blocking=False)
    assert await alone.acquire()  # "a" was not left held
    await alone.release()
    waiting = asyncio.create_task(both.acquire(timeout=5.0))
    await asyncio.sleep(0.05)
    await blocker.release()
    assert await waiting
    fences = both.fencing_tokens
    assert set(fences) == {"a", "b"}
    assert not await Mutex(store, "a", blocking=False).acquire()
    await both.release()


async def test_readers_share_a_writer_excludes_and_a_waiting_writer_goes_first(
    store: Any,
) -> None:
    rw = ReadWriteLock(store, "catalog", ttl=5.0)
    other = ReadWriteLock(store, "catalog", ttl=5.0)
    assert await rw.read().acquire()
    assert await other.read().acquire(blocking=False)  # readers share
    assert await rw.readers() == 2
    writer = asyncio.create_task(other.write().acquire(timeout=5.0))
    await asyncio.sleep(0.1)
    assert not writer.done()
    late_reader = ReadWriteLock(store, "catalog", ttl=5.0)
    assert not await late_reader.read().acquire(blocking=False)  # the writer waits first
    await rw.read().release()
    await other.read().release()
    assert await asyncio.wait_for(writer, 5.0)
    assert await rw.writing()
    await other.write().release()
    assert await late_reader.read().acquire(timeout=5.0)
    await late_reader.read().release()


async def test_locked_runs_a_decorated_call_once_while_held(store: Any) -> None:
    runs = 0

    @locked("report:{day}", client=store, ttl=5.0, skip_if_locked=True)
    async def report(day: str) -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.1)
        return day

    results = await asyncio.gather(*(report("mon") for _ in range(5)))
    assert runs == 1
    assert results.count("mon") == 1


async def test_a_single_flight_runs_once_for_every_caller(store: Any) -> None:
    runs = 0
    started = asyncio.Event()

    async def job() -> int:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.sleep(0.2)
        return 42

    # Three objects, as three processes would have, on one name.
    flights = [SingleFlight(store, "refresh", ttl=5.0, timeout=5.0) for _ in range(3)]
    assert await asyncio.gather(*(flight.run(job) for flight in flights)) == [42, 42, 42]
    assert runs == 1
    assert await flights[0].run(job) == 42  # a new flight, after the last one landed
    assert runs == 2

    async def failing() -> int:
        await asyncio.sleep(0.2)
        raise KeyError("gone")

    first = asyncio.create_task(flights[0].run(failing))
    await asyncio.sleep(0.05)
    with pytest.raises(KeyError):  # callers of the leader's process get its error itself
        await flights[1].run(failing)
    with pytest.raises(KeyError):
        await first


async def test_an_election_has_one_leader_and_watchers_see_changes(store: Any) -> None:
    one = Election(store, "scheduler", identity="one", ttl=5.0)
    two = Election(store, "scheduler", identity="two", ttl=5.0)
    seen: list[str | None] = []

    async def watch() -> None:
        async for info in two.watch(interval=10.0):  # woken by changes, not the interval
            seen.append(None if info is None else info.identity)

    async def lead() -> int:
        async with two as second_term:
            await asyncio.sleep(0.05)
            return second_term.fencing_token

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.1)
    async with one as term:
        campaign = asyncio.create_task(lead())
        await asyncio.sleep(0.1)
        assert not campaign.done()
        info = await two.leader()
        assert info is not None
        assert info.identity == "one"
        assert info.term == term.fencing_token
    assert await asyncio.wait_for(campaign, 5.0) > term.fencing_token
    for _ in range(100):
        if seen[-1:] == [None] and "two" in seen:
            break
        await asyncio.sleep(0.02)
    watcher.cancel()
    assert seen[0] is None
    assert "one" in seen
    assert "two" in seen
    assert seen[-1] is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_processes_exclude_each_other(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "memory":
        pytest.skip("memory keeps locks inside one process: it excludes nothing across them")
    url = redis_url
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        asyncio.run(empty_postgres(url))
    records = run_contenders(url, tmp_path, "across", [3, 8])
    assert len(records) == 3 * 3 * 8
    assert overlaps(records) == []


def test_every_backend_here_is_a_backend() -> None:
    assert isinstance(MemoryBackend(), Backend)
