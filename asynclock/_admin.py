"""What an operator needs: every lock's state read from the server, and a forced release.

The command line (``python -m asynclock inspect|release|watch``) is built on this
module; it reads keys only through ``SCAN`` (never ``KEYS``), on every primary of a
Redis Cluster (redis-py's cluster client scans them all).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from . import _scripts
from ._names import DEFAULT_PREFIX, NamedLocks, base_key, fence_key, line_keys, owner_key
from ._permits import SemaphorePermits
from ._sides import ReadWriteSide
from ._validate import check_name, check_prefix

Primitive = Literal["mutex", "semaphore", "rwlock"]

#: A fencing token is at least the server clock in microseconds when it was taken, and
#: equals it unless acquires of the name came faster than one a microsecond: so the
#: clock less the token is how long ago it was taken, as long as that comes out
#: within a day (the fence counter's lifetime when idle) and not below zero.
_PLAUSIBLE_US = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Holder:
    """One holder of a lock.

    :ivar token: its owner token
    :ivar ttl: seconds until its lease expires on the server (``None``: no expiry)
    :ivar fencing_token: its fencing token, when the server still has it
    :ivar held_for: seconds since it acquired (or was last handed the lock), when the
        fencing token tells (see ``next_fence`` in ``scripts/common.lua``)
    :ivar permits: how many permits it holds (1 for a mutex)
    :ivar side: ``"read"`` or ``"write"``, for a read-write lock's holder
    """

    token: str
    ttl: float | None
    fencing_token: int | None
    held_for: float | None
    permits: int = 1
    side: Literal["read", "write"] | None = None


@dataclass(frozen=True, slots=True)
class LockState:
    """One lock as the server has it now.

    :ivar name: the lock's name
    :ivar primitive: ``"mutex"`` (``Mutex``, ``MultiLock``, ``@locked``, an
        ``Election``'s term, a ``SingleFlight``'s leader), ``"semaphore"`` or
        ``"rwlock"`` (``ReadWriteLock``)
    :ivar key: its main key (the owner key, the semaphore's holders key, the
        read-write lock's writer key)
    :ivar holders: who holds it (none: free, with processes waiting)
    :ivar waiting: processes standing in its line (a mutex's or a read-write lock's;
        semaphores keep none)
    :ivar limit: the limit in force, for a semaphore with holders
    """

    name: str
    primitive: Primitive
    key: str
    holders: tuple[Holder, ...]
    waiting: int = 0
    limit: int | None = None


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def name_of(prefix: str, kind: str, key: str) -> str | None:
    """The name whose ``kind`` key is ``key`` (see ``base_key``), or ``None``."""
    rest = key[len(prefix) + len(kind) :]
    if not key.startswith(prefix + kind) or not rest:
        return None
    if rest.startswith(":{") and rest.endswith("}"):
        name = rest[2:-1]
    elif rest.startswith("="):
        name = rest[1:]
    elif rest.startswith("#{") and "}" in rest:
        name = rest[rest.index("}") + 1 :]
    else:
        return None
    # Only a key that the name really maps to: not a key of another kind or layout.
    return name if name and base_key(prefix, kind, name) == key else None


async def _scan(client: Any, match: str) -> AsyncIterator[str]:
    async for key in client.scan_iter(match=match, count=1000):
        yield key.decode() if isinstance(key, bytes) else key


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _server_clock_us(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1_000_000 + int(micros)


def _held_for(fencing_token: int | None, now_us: int) -> float | None:
    if fencing_token is None:
        return None
    ago = now_us - fencing_token
    if ago > _PLAUSIBLE_US or ago < -1_000_000:
        return None  # a counter that ran ahead of the clock, or a foreign value
    return max(ago, 0) / 1_000_000


async def _mutex_state(client: Any, prefix: str, name: str, now_us: int) -> LockState:
    key = owner_key(prefix, name)
    token = _text(await client.get(key))
    holders: tuple[Holder, ...] = ()
    if token is not None:
        pttl = int(await client.pttl(key))
        raw_fence = _text(await client.get(fence_key(prefix, name)))
        fence = int(raw_fence) if raw_fence and raw_fence.isdigit() else None
        ttl = pttl / 1000 if pttl >= 0 else None
        holders = (Holder(token, ttl, fence, _held_for(fence, now_us)),)
    alive = line_keys(prefix, name)[1]
    # Places that have not lapsed: a crashed waiter's lingers until it does.
    waiting = int(await client.zcount(alive, f"({now_us // 1000}", "+inf"))
    return LockState(name, "mutex", key, holders, waiting)


async def _semaphore_state(client: Any, prefix: str, name: str, now_us: int) -> LockState:
    holders_key, permits_key, limit_key = SemaphorePermits(prefix, name, 1, 1).keys[:3]
    now_ms = now_us // 1000
    live = await client.zrangebyscore(holders_key, f"({now_ms}", "+inf", withscores=True)
    permits = {_text(k): _text(v) for k, v in (await client.hgetall(permits_key)).items()}
    holders = []
    for raw_token, expiry in live:
        token = _text(raw_token) or ""
        count, _, fence_text = (permits.get(token) or "1:").partition(":")
        fence = int(fence_text) if fence_text.isdigit() else None
        ttl = (expiry - now_ms) / 1000
        holders.append(Holder(token, ttl, fence, _held_for(fence, now_us), int(count)))
    limit_text = _text(await client.get(limit_key))
    limit = int(limit_text) if limit_text and limit_text.isdigit() else None
    return LockState(name, "semaphore", holders_key, tuple(holders), 0, limit)


async def _rwlock_state(client: Any, prefix: str, name: str, now_us: int) -> LockState:
    writer_key, readers_key, fences_key, _, alive_key, fence_counter = ReadWriteSide(
        prefix, name, "w"
    ).keys[:6]
    now_ms = now_us // 1000
    holders = []
    token = _text(await client.get(writer_key))
    if token is not None:
        pttl = int(await client.pttl(writer_key))
        raw_fence = _text(await client.get(fence_counter))
        fence = int(raw_fence) if raw_fence and raw_fence.isdigit() else None
        ttl = pttl / 1000 if pttl >= 0 else None
        holders.append(Holder(token, ttl, fence, _held_for(fence, now_us), side="write"))
    live = await client.zrangebyscore(readers_key, f"({now_ms}", "+inf", withscores=True)
    fences = {_text(k): _text(v) for k, v in (await client.hgetall(fences_key)).items()}
    for raw_token, expiry in live:
        reader = _text(raw_token) or ""
        fence_text = fences.get(reader) or ""
        fence = int(fence_text) if fence_text.isdigit() else None
        # A reader's fence is the last write's: it tells nothing of when it came.
        holders.append(Holder(reader, (expiry - now_ms) / 1000, fence, None, side="read"))
    waiting = int(await client.zcount(alive_key, f"({now_ms}", "+inf"))
    return LockState(name, "rwlock", writer_key, tuple(holders), waiting)


async def inspect_locks(
    client: Any, pattern: str = "*", *, prefix: str = DEFAULT_PREFIX
) -> list[LockState]:
    """Every lock under ``prefix`` whose name matches ``pattern`` (a shell-style glob).

    A lock is listed while it is held, or while processes wait in its line; sorted by
    primitive, then name. Reads only (``SCAN``, ``GET``, ``PTTL``, ``ZCOUNT``, ...):
    what it reports may change the moment after.
    """
    check_prefix(prefix)
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, not {type(pattern).__name__}")
    now_us = await _server_clock_us(client)
    literal = glob_escape(prefix)
    mutexes: set[str] = set()
    for kind in ("lock", "line-alive"):
        async for key in _scan(client, f"{literal}{kind}*"):
            name = name_of(prefix, kind, key)
            if name is not None and fnmatch.fnmatchcase(name, pattern):
                mutexes.add(name)
    semaphores: set[str] = set()
    async for key in _scan(client, f"{literal}semaphore*:holders"):
        name = name_of(prefix, "semaphore", key.removesuffix(":holders"))
        if name is not None and fnmatch.fnmatchcase(name, pattern):
            semaphores.add(name)
    rwlocks: set[str] = set()
    async for key in _scan(client, f"{literal}rwlock*"):
        for suffix in (":writer", ":readers", ":line-alive"):
            if key.endswith(suffix):
                name = name_of(prefix, "rwlock", key.removesuffix(suffix))
                if name is not None and fnmatch.fnmatchcase(name, pattern):
                    rwlocks.add(name)
    states = [await _mutex_state(client, prefix, name, now_us) for name in sorted(mutexes)]
    states += [await _semaphore_state(client, prefix, n, now_us) for n in sorted(semaphores)]
    states += [await _rwlock_state(client, prefix, n, now_us) for n in sorted(rwlocks)]
    return [state for state in states if state.holders or state.waiting]


async def inspect_lock(client: Any, name: str, *, prefix: str = DEFAULT_PREFIX) -> LockState | None:
    """The lock ``name`` as the server has it now, or ``None`` when nobody holds it.

    A name held as a mutex is reported as one; otherwise as a semaphore, or as a
    read-write lock, if it is one.
    """
    check_name(name)
    check_prefix(prefix)
    now_us = await _server_clock_us(client)
    state = await _mutex_state(client, prefix, name, now_us)
    if not state.holders:
        state = await _semaphore_state(client, prefix, name, now_us)
    if not state.holders:
        state = await _rwlock_state(client, prefix, name, now_us)
    return state if state.holders else None


async def force_release(
    client: Any, state: LockState, *, prefix: str = DEFAULT_PREFIX
) -> tuple[str, ...]:
    """Release the holders of ``state`` (from :func:`inspect_lock`), as their releases would.

    Each is freed by its own token, so a holder that let go meanwhile, and whoever
    took the name after it, are left alone; the waiters are woken as by a release.
    Returns the tokens that were still holding and are now freed. The old holder
    finds out at its next extension (within a third of its TTL with auto-extend): its
    lease is lost, its body cancelled and ``LockLost`` raised. Unlike a release, this
    leaves no tombstone, so the holder's own release finds the lease gone and says so.
    """
    check_prefix(prefix)
    if state.primitive == "mutex":
        keys: tuple[str, ...] = NamedLocks.of(prefix, (state.name,)).keys
        script = _scripts.FORCE_RELEASE
    elif state.primitive == "rwlock":
        side = ReadWriteSide(prefix, state.name, "w").keys
        keys = (*side[:4], side[7], side[8])
        script = _scripts.RW_FORCE_RELEASE
    else:
        keys = SemaphorePermits(prefix, state.name, state.limit or 1, 1).keys[:2]
        script = _scripts.SEMAPHORE_FORCE_RELEASE
    released = []
    for holder in state.holders:
        # No tombstone (unlike a release): the holder's own release finds its lease
        # gone and reports it lost.
        if int(await script(client, keys, (holder.token,))) > 0:
            released.append(holder.token)
    return tuple(released)
