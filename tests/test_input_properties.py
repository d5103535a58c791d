"""Property-based: any input is either accepted and works, or refused before any command.

Each example runs against the real server; the server's command statistics show
whether anything reached it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asynclock import Election, MultiLock, Mutex, ReadWriteLock, Semaphore, SingleFlight
from asynclock._lock import LeaseLock

SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

junk = st.one_of(
    st.none(), st.booleans(), st.binary(max_size=4), st.lists(st.integers(), max_size=2)
)
names = st.one_of(st.text(max_size=12), st.integers(), junk)
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-3, max_value=100),
    st.floats(min_value=0.01, max_value=60),
    st.text(max_size=3),
    junk,
)
counts = st.one_of(st.integers(min_value=-2, max_value=6), st.floats(), st.text(max_size=2), junk)
name_lists = st.one_of(
    st.lists(st.text(max_size=4), max_size=4),
    st.lists(names, max_size=3),
    st.text(max_size=4),
    junk,
)


async def commands_seen(client: redis.Redis) -> int:
    """Commands the server has run, not counting the INFO calls of this check."""
    stats = await client.info("commandstats")
    return sum(int(value["calls"]) for key, value in stats.items() if key != "cmdstat_info")


async def quiet(client: redis.Redis) -> int:
    """The server's command count, once no more commands come in.

    An earlier example may have left work in the background that sends a command a
    little later (the clean-up of an acquire whose short timeout ran out, a process
    leaving a line): it must not count against the input tried next. Bounded: after
    a second of commands still coming in, the last count is taken.
    """
    seen = await commands_seen(client)
    steady = 0
    for _ in range(100):
        await asyncio.sleep(0.01)
        now = await commands_seen(client)
        steady = steady + 1 if now == seen else 0
        if steady == 2:
            break
        seen = now
    return seen


async def accepted_or_refused(client: redis.Redis, build: Any, timeout: Any) -> None:
    """Build a lock and acquire it; refused input must not reach the server."""
    before = await quiet(client)
    try:
        lock: LeaseLock = build()
        acquired = await lock.acquire(timeout=timeout)
    except (TypeError, ValueError):
        assert await commands_seen(client) == before  # nothing was sent
        return
    if not acquired:
        # A free lock, but a wait shorter than a round trip on a loaded machine: the
        # timeout ran out first (its clean-up releases whatever the try took).
        assert isinstance(timeout, (int, float))
        assert timeout < 1.0
        return
    assert lock.owned
    await lock.release()
    assert not await lock.locked()


@SETTINGS
@given(name=names, ttl=seconds, timeout=seconds)
async def test_mutex_input(client: redis.Redis, name: Any, ttl: Any, timeout: Any) -> None:
    await accepted_or_refused(client, lambda: Mutex(client, name, ttl=ttl), timeout)


@SETTINGS
@given(name=names, limit=counts, permits=counts, ttl=seconds)
async def test_semaphore_input(
    client: redis.Redis, name: Any, limit: Any, permits: Any, ttl: Any
) -> None:
    build = lambda: Semaphore(client, name, limit=limit, permits=permits, ttl=ttl)  # noqa: E731
    await accepted_or_refused(client, build, None)


@SETTINGS
@given(names_given=name_lists, ttl=seconds)
async def test_multilock_input(client: redis.Redis, names_given: Any, ttl: Any) -> None:
    build = lambda: MultiLock(client, names_given, ttl=ttl)  # noqa: E731
    await accepted_or_refused(client, build, None)


identities = st.one_of(st.text(max_size=6), st.text(min_size=1020, max_size=1030), junk)


@SETTINGS
@given(name=names, identity=identities, ttl=seconds, interval=seconds)
async def test_election_input(
    client: redis.Redis, name: Any, identity: Any, ttl: Any, interval: Any
) -> None:
    """An election is refused at construction (its watch() at its first step) before
    any command, or it leads, reads its leader, watches, and steps down."""
    before = await quiet(client)
    try:
        election = Election(client, name, identity=identity, ttl=ttl)
    except (TypeError, ValueError):
        assert await commands_seen(client) == before
        return
    watching = election.watch(interval=interval)
    try:
        await anext(watching)
    except (TypeError, ValueError):
        assert await commands_seen(client) == before
        return
    finally:
        await watching.aclose()
    async with election as term:
        info = await election.leader()
        assert info is not None
        assert (info.identity, info.term) == (election.identity, term.fencing_token)
    assert await election.leader() is None


@SETTINGS
@given(name=names, ttl=seconds, timeout=seconds, keep_for=seconds, max_outcome=counts)
async def test_single_flight_input(
    client: redis.Redis, name: Any, ttl: Any, timeout: Any, keep_for: Any, max_outcome: Any
) -> None:
    """A flight is refused at construction before any command, or it runs its job and
    returns its value (refused for size if ``max_outcome`` is too small for it)."""
    before = await quiet(client)
    try:
        flight = SingleFlight(
            client, name, ttl=ttl, timeout=timeout, keep_for=keep_for, max_outcome=max_outcome
        )
    except (TypeError, ValueError):
        assert await commands_seen(client) == before
        return

    async def job() -> list[int]:
        return [1, 2, 3]

    if max_outcome < len("[1, 2, 3]"):
        with pytest.raises(ValueError, match="max_outcome"):
            await flight.run(job)
    else:
        assert await flight.run(job) == [1, 2, 3]
    assert not await flight._mutex.locked()


@SETTINGS
@given(name=names, ttl=seconds, timeout=seconds, write=st.booleans())
async def test_read_write_lock_input(
    client: redis.Redis, name: Any, ttl: Any, timeout: Any, write: bool
) -> None:
    def build() -> LeaseLock:
        rw = ReadWriteLock(client, name, ttl=ttl)
        return rw.write() if write else rw.read()

    await accepted_or_refused(client, build, timeout)
