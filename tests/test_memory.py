"""What is particular to :class:`MemoryBackend`: one process, no I/O, bounded memory.

The promises it shares with Redis are in ``test_backends.py``.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from asynclock import LockLost, MemoryBackend, Mutex, ReadWriteLock, Semaphore
from asynclock._memory import _RECENT_RELEASES, _SWEEP_EVERY
from asynclock._resource import Successor


async def test_two_memory_backends_exclude_nothing() -> None:
    # Like two processes: only a shared backend excludes.
    first, second = MemoryBackend(), MemoryBackend()
    assert not first.spans_processes
    async with Mutex(first, "job"):
        assert await Mutex(second, "job", blocking=False).acquire()
        assert not await Mutex(first, "job", blocking=False).acquire()


def test_options_a_memory_store_cannot_honour_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        Mutex(MemoryBackend(), "job", replicas=1)


async def test_a_hand_over_to_a_waiter_that_gave_up_gives_it_nothing() -> None:
    backend = MemoryBackend()
    locks = backend.locks("asynclock:", ("x",))
    assert (await locks.acquire(backend, "holder", 5000)).acquired
    # The waiter gave up, and its clean-up released its token before the hand-over.
    assert not await locks.release(backend, "waiter")
    outcome = await locks.hand_over(backend, "holder", Successor("waiter", 5000))
    assert outcome.released
    assert outcome.fencing_tokens is None
    assert not await locks.locked(backend)
    # ... while a waiter still waiting gets the lock in the same step, with a new fence.
    assert (await locks.acquire(backend, "holder2", 5000)).acquired
    outcome = await locks.hand_over(backend, "holder2", Successor("waiter2", 5000))
    assert outcome.fencing_tokens is not None
    assert not (await locks.acquire(backend, "other", 5000)).acquired
    assert await locks.release(backend, "waiter2")


async def test_a_release_sent_again_still_counts_and_an_acquire_after_it_takes_nothing() -> None:
    backend = MemoryBackend()
    locks = backend.locks("asynclock:", ("x",))
    assert (await locks.acquire(backend, "t", 5000)).acquired
    assert await locks.release(backend, "t")
    assert await locks.release(backend, "t")  # the same release again
    assert not (await locks.acquire(backend, "t", 5000)).acquired  # overtaken by its clean-up


async def test_what_abandoned_names_leave_is_swept() -> None:
    backend = MemoryBackend()
    for i in range(_SWEEP_EVERY - 1):
        assert (await backend.locks("p:", (f"n{i}",)).acquire(backend, f"t{i}", 1)).acquired
    assert len(backend._holds) == _SWEEP_EVERY - 1
    await asyncio.sleep(0.01)  # every lease has run out, nobody touched its name
    assert (await backend.locks("p:", ("last",)).acquire(backend, "last", 5000)).acquired
    assert list(backend._holds) == ["p:lock:{last}"]


async def test_reading_a_lock_leaves_nothing_behind() -> None:
    backend = MemoryBackend()
    for i in range(100):
        rw = ReadWriteLock(backend, f"rw{i}")
        assert not await rw.writing()
        assert not await rw.write().locked()
    assert backend._rwlocks == {}


async def test_the_record_of_releases_is_bounded() -> None:
    backend = MemoryBackend()
    locks = backend.locks("asynclock:", ("x",))
    for i in range(_RECENT_RELEASES + 100):
        assert (await locks.acquire(backend, f"t{i}", 5000)).acquired
        assert await locks.release(backend, f"t{i}")
    assert len(backend._released) == _RECENT_RELEASES
    assert "t0" not in backend._released


async def test_a_backend_serves_one_loop_after_another() -> None:
    backend = MemoryBackend()

    async def contend() -> int:
        lock = Mutex(backend, "job", ttl=5.0)

        async def worker() -> None:
            for _ in range(5):
                async with lock:
                    await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(3)))
        return lock.statistics().acquisitions

    # A script that calls asyncio.run twice: the waiters' notifier follows the loop.
    assert await asyncio.to_thread(asyncio.run, contend()) == 15
    assert await asyncio.to_thread(asyncio.run, contend()) == 15


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_memory_locks_under_anyio(anyio_backend: str) -> None:
    backend = MemoryBackend()
    inside = most = 0

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with Semaphore(backend, "pool", limit=2, ttl=5.0):
                inside += 1
                most = max(most, inside)
                await anyio.sleep(0.001)
                inside -= 1

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(worker)
    assert most == 2
    with pytest.raises(LockLost):  # a loss inside a cancel scope
        with anyio.move_on_after(5):
            async with Mutex(backend, "lost", ttl=0.1, auto_extend=False):
                await anyio.sleep(2)
