"""The operations measured, shared by ``python -m benchmarks`` and ``pytest benchmarks/``.

Each kind runs ``n`` operations back to back, with sequential awaits in the calling
task, on one ``redis.asyncio.Redis`` client. Lock kinds take a lock that nobody else
holds, so every acquire must succeed at once; one that does not raises
``BenchmarkError`` rather than being timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from asynclock import LockEvent, MultiLock, Mutex, Semaphore, locked, subscribe
from asynclock._lock import LeaseLock
from asynclock._names import (
    DEFAULT_PREFIX,
    PLACE_MS,
    RELEASE_TOMBSTONE_MS,
    NamedLocks,
    base_key,
    fence_key,
    owner_key,
)
from asynclock._scripts import Script

#: The trivial script whose ``EVALSHA`` round trip is the yardstick.
TRIVIAL_SCRIPT = "return 1"
#: A script that does nothing, sent the way asynclock sends its own: two calls of it,
#: with an acquire's and a release's keys and arguments, are the floor under any
#: acquire+release pair of asynclock, whatever the lock does.
EMPTY_SCRIPT = Script("benchmark_empty", "return {1, 1}")
#: The TTL of every lock taken, in seconds: far longer than any iteration.
LOCK_TTL = 30.0
#: The longest the ``async with`` kind waits for its (free) lock, in seconds.
ACQUIRE_TIMEOUT = 5.0

#: Runs ``n`` operations of one kind, back to back.
Operation = Callable[[int], Awaitable[None]]


class BenchmarkError(RuntimeError):
    """A measured operation did not do what it should (e.g. a free lock not acquired)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of operation to measure.

    :ivar key: a short name, for progress lines and tests
    :ivar label: the row's label in the table
    :ivar lock: whether one operation is a lock acquire+release pair
    :ivar run: runs ``n`` operations back to back
    :ivar owner_key: the key that holds the lock while it is held (lock kinds)
    :ivar fence_key: the asynclock fence counter, bumped once per acquire (asynclock kinds)
    :ivar extra_keys: other keys the kind writes (a MultiLock's second name)
    """

    key: str
    label: str
    lock: bool
    run: Operation
    owner_key: str | None = None
    fence_key: str | None = None
    extra_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this kind writes."""
        named = tuple(key for key in (self.owner_key, self.fence_key) if key is not None)
        return named + self.extra_keys


def floor_pairs(client: aioredis.Redis, name: str) -> Operation:
    """Return an operation that runs :data:`EMPTY_SCRIPT` twice, as an acquire and a
    release of lock ``name`` would run theirs (same keys, same arguments)."""
    keys = NamedLocks.of(DEFAULT_PREFIX, (name,)).keys

    async def run(n: int) -> None:
        """``n`` pairs of empty script calls."""
        for _ in range(n):
            await EMPTY_SCRIPT(client, keys, ("token", 30000, "", "", PLACE_MS))
            await EMPTY_SCRIPT(client, keys, ("token", RELEASE_TOMBSTONE_MS))

    return run


async def build_kinds(client: aioredis.Redis, tag: str) -> list[Kind]:
    """Return the kinds to measure, on lock names that start with ``tag``.

    Loads the trivial script once, so that every ``EVALSHA`` call finds it.
    """
    sha = await client.script_load(TRIVIAL_SCRIPT)
    reused_name, with_name, no_extend_name = (f"{tag}:{key}" for key in ("mutex", "with", "ne"))
    reused = Mutex(client, reused_name, ttl=LOCK_TTL)
    no_extend = Mutex(client, no_extend_name, ttl=LOCK_TTL, auto_extend=False)
    semaphore_name, multi_names = f"{tag}:sem", [f"{tag}:multi-1", f"{tag}:multi-2"]
    semaphore = Semaphore(client, semaphore_name, limit=5, ttl=LOCK_TTL)
    multi = MultiLock(client, multi_names, ttl=LOCK_TTL)
    peer_name = f"{tag}:redis-py"
    peer = client.lock(peer_name, timeout=LOCK_TTL)

    async def ping(n: int) -> None:
        """``n`` PING round trips."""
        for _ in range(n):
            await client.ping()

    async def evalsha(n: int) -> None:
        """``n`` EVALSHA round trips of the trivial script."""
        for _ in range(n):
            await client.evalsha(sha, 0)

    def acquire_release(lock: LeaseLock) -> Operation:
        """Return an operation that acquires (without waiting) and releases ``lock``."""

        async def run(n: int) -> None:
            """``n`` acquire+release pairs on one reused lock object."""
            for _ in range(n):
                if not await lock.acquire(blocking=False):
                    raise BenchmarkError(f"the free lock {lock!r} was not acquired")
                await lock.release()

        return run

    async def with_new_mutex(n: int) -> None:
        """``n`` ``async with Mutex(...)`` blocks, each on a new lock object."""
        for _ in range(n):
            async with Mutex(client, with_name, ttl=LOCK_TTL, timeout=ACQUIRE_TIMEOUT):
                pass

    decorated_name, observed_name = f"{tag}:decorated", f"{tag}:observed"

    @locked(decorated_name, client=client, ttl=LOCK_TTL, timeout=ACQUIRE_TIMEOUT)
    async def decorated_job() -> None:
        """The job of the decorator benchmark: nothing."""

    async def decorated(n: int) -> None:
        """``n`` calls of a ``@locked`` coroutine function."""
        for _ in range(n):
            await decorated_job()

    async def observed(n: int) -> None:
        """``n`` ``async with Mutex(...)`` blocks while a subscriber receives events."""
        received: list[LockEvent] = []
        unsubscribe = subscribe(received.append)
        try:
            for _ in range(n):
                async with Mutex(client, observed_name, ttl=LOCK_TTL, timeout=ACQUIRE_TIMEOUT):
                    pass
        finally:
            unsubscribe()
        # Requested, acquired, released: three events a section.
        if len(received) != 3 * n:
            raise BenchmarkError(f"expected {3 * n} events, the subscriber got {len(received)}")

    async def redis_py_lock(n: int) -> None:
        """``n`` acquire+release pairs of redis-py's asyncio Lock, one reused object."""
        for _ in range(n):
            if not await peer.acquire(blocking=False):
                raise BenchmarkError(f"the free lock {peer_name!r} was not acquired")
            await peer.release()

    def mutex_kind(key: str, label: str, name: str, run: Operation) -> Kind:
        """Return an asynclock lock kind on lock ``name``."""
        owner, fence = owner_key(DEFAULT_PREFIX, name), fence_key(DEFAULT_PREFIX, name)
        return Kind(key, label, True, run, owner, fence)

    return [
        Kind("ping", "PING", False, ping),
        Kind("evalsha", "EVALSHA 'return 1'", False, evalsha),
        Kind("floor", "2 empty scripts (the floor)", False, floor_pairs(client, f"{tag}:floor")),
        mutex_kind("mutex", "Mutex acquire+release", reused_name, acquire_release(reused)),
        mutex_kind("with", "async with Mutex(...)", with_name, with_new_mutex),
        mutex_kind(
            "no-extend", "Mutex auto_extend=False", no_extend_name, acquire_release(no_extend)
        ),
        mutex_kind("decorated", "@locked coroutine call", decorated_name, decorated),
        mutex_kind("observed", "async with, 1 event subscriber", observed_name, observed),
        Kind(
            "semaphore",
            "Semaphore(limit=5) acquire+release",
            True,
            acquire_release(semaphore),
            f"{base_key(DEFAULT_PREFIX, 'semaphore', semaphore_name)}:holders",
            f"{base_key(DEFAULT_PREFIX, 'semaphore', semaphore_name)}:fence",
            (f"{base_key(DEFAULT_PREFIX, 'semaphore', semaphore_name)}:limit",),
        ),
        Kind(
            "multilock",
            "MultiLock(2 names) acquire+release",
            True,
            acquire_release(multi),
            owner_key(DEFAULT_PREFIX, multi_names[0]),
            fence_key(DEFAULT_PREFIX, multi_names[0]),
            (owner_key(DEFAULT_PREFIX, multi_names[1]), fence_key(DEFAULT_PREFIX, multi_names[1])),
        ),
        Kind("redis-py", "redis-py Lock acquire+release", True, redis_py_lock, peer_name),
    ]


async def check_clean(client: aioredis.Redis, kinds: Sequence[Kind]) -> None:
    """Raise ``BenchmarkError`` if a lock is still held or a task was left running."""
    held = [
        kind.owner_key for kind in kinds if kind.owner_key and await client.exists(kind.owner_key)
    ]
    if held:
        raise BenchmarkError(f"locks still held after the run: {held}")
    await asyncio.sleep(0)  # let cancelled watchdogs finish
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        raise BenchmarkError(f"{len(others)} task(s) still running after the run: {others}")


async def delete_keys(client: aioredis.Redis, kinds: Sequence[Kind]) -> None:
    """Delete every key the kinds wrote."""
    keys = [key for kind in kinds for key in kind.keys]
    if keys:
        await client.delete(*keys)
