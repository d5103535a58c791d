"""Locks inside one process: :class:`MemoryBackend`.

The same promises as on Redis, kept in dictionaries, with no I/O: leases with a TTL
that lapse when not extended (so a lease can be lost, and its body is cancelled),
fencing tokens, semaphore limits with per-holder expiry, all-or-nothing locks over
several names, read-write locks with the same writer preference, hand-over to the
next waiter in line, and the same events. Nothing here excludes another process.

Each call below runs to its end without awaiting anything, so no other coroutine
runs in the middle of one: it is atomic, as a script is on Redis. Expiry is lazy, as
Redis's is: a lease past its time counts as gone (and is dropped) whenever its name
is touched, and every :data:`_SWEEP_EVERY` writes a sweep drops what abandoned names
left. Time is the process's monotonic clock.

A release keeps its token in a short record of recent releases, as the scripts'
tombstones do on Redis: a hand-over to a waiter that has given up meanwhile (its
token released by its clean-up) must give it nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from ._backend import Backend
from ._errors import LimitMismatch
from ._names import PLACE_MS, RELEASE_TOMBSTONE_MS, base_key, owner_key
from ._notify import Heard, heard
from ._resource import Grant, HandOver, Place, Successor
from ._shapes import ExclusiveNames, Mode, SemaphoreShape, SideShape

# How many writes between sweeps of expired entries (see the module's docstring).
_SWEEP_EVERY: Final = 1024
# The most releases remembered at once (each is kept RELEASE_TOMBSTONE_MS at most).
_RECENT_RELEASES: Final = 4096


@dataclass(slots=True)
class _Hold:
    """One holder: its token, when its lease runs out, its fencing token, its permits."""

    token: str
    expires: float
    fence: int
    permits: int = 1


@dataclass(slots=True)
class _Permits:
    """A semaphore: its live holders by token, and the limit they agreed on."""

    limit: int
    holders: dict[str, _Hold] = field(default_factory=dict)


@dataclass(slots=True)
class _Landed:
    """A single flight's outcome: its lease's fence, until when late arrivals may take
    it, and when it goes."""

    fence: int
    until: float
    expires: float
    outcome: bytes


@dataclass(slots=True)
class _ReadWrite:
    """A read-write lock: its writer, its readers by token, the last writer's fencing
    token, and the line of waiting sides (``"r:<id>"``/``"w:<id>"``) with their
    arrival and the time their place lapses unless renewed."""

    writer: _Hold | None = None
    readers: dict[str, _Hold] = field(default_factory=dict)
    last_fence: int = 0
    line: dict[str, tuple[float, float]] = field(default_factory=dict)


class MemoryNotifier:
    """The waiters of one event loop, woken by the releases of their backend."""

    def __init__(self) -> None:
        #: The id of this process's waiters (there is one process: it names nobody).
        self.id = secrets.token_hex(8)
        #: The event loop its waiters' events belong to.
        self.loop = asyncio.get_running_loop()
        self._events: dict[str, set[asyncio.Event]] = {}

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Have ``event`` set by every release on ``channels`` from now on."""
        for channel in channels:
            self._events.setdefault(channel, set()).add(event)

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Stop setting ``event`` on releases on ``channels``."""
        for channel in channels:
            events = self._events.get(channel)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[channel]

    def publish(self, channels: Iterable[str]) -> None:
        """Wake every waiter on ``channels``."""
        for channel in channels:
            for event in self._events.get(channel, ()):
                event.set()


class MemoryBackend(Backend):
    """Locks inside this process, with Redis's semantics and no server.

    For one process (a single instance, local development) and for unit tests of
    code that takes locks: ``Mutex(MemoryBackend(), "jobs:report")``. Share one
    backend between everything that must exclude each other; two backends, like two
    processes, exclude nothing. It serves one event loop at a time, as asyncio's
    own locks do (not threads). Fencing tokens come from one counter per backend,
    never below the clock in microseconds: strictly increasing per name.
    """

    kind = "memory"
    spans_processes = False

    def __init__(self) -> None:
        self._holds: dict[str, _Hold] = {}
        self._semaphores: dict[str, _Permits] = {}
        self._rwlocks: dict[str, _ReadWrite] = {}
        self._landed: dict[str, _Landed] = {}
        self._announced: dict[str, tuple[str, str]] = {}  # leader key -> (token, text)
        self._last_fence = 0
        self._released: dict[str, float] = {}  # token -> when, oldest first
        self._writes = 0
        self._notifier: MemoryNotifier | None = None

    def __repr__(self) -> str:
        return f"<MemoryBackend holding {len(self._holds)} lock(s)>"

    def locks(self, prefix: str, names: tuple[str, ...]) -> MemoryLocks:
        """The exclusive locks over ``names``."""
        return MemoryLocks(self, names, tuple(owner_key(prefix, name) for name in names))

    def semaphore(self, prefix: str, name: str, limit: int, permits: int) -> MemorySemaphore:
        """``permits`` of the semaphore ``name`` of ``limit`` permits."""
        return MemorySemaphore(self, name, base_key(prefix, "semaphore", name), limit, permits)

    def read_write(self, prefix: str, name: str, mode: Mode) -> MemorySide:
        """One side of the read-write lock ``name``."""
        return MemorySide(self, name, base_key(prefix, "rwlock", name), mode)

    def outcomes(self, prefix: str, name: str) -> MemoryOutcomes:
        """The outcome of the single flight ``name``."""
        return MemoryOutcomes(self, owner_key(prefix, name), base_key(prefix, "flight", name))

    def leadership(self, prefix: str, name: str) -> MemoryLeadership:
        """The leader of the election ``name``."""
        return MemoryLeadership(self, owner_key(prefix, name), base_key(prefix, "leader", name))

    def notifications(self) -> MemoryNotifier:
        """The notifier of the running loop's waiters."""
        notifier = self._notifier
        if notifier is None or notifier.loop is not asyncio.get_running_loop():
            notifier = self._notifier = MemoryNotifier()
        return notifier

    # -- shared by the resources -----------------------------------------------------

    def fence(self) -> int:
        """The next fencing token: one more than the last, and never below the clock
        in microseconds (as on Redis), so tokens keep increasing when a new backend
        (a restart, a fallback from Redis) takes over a name."""
        self._last_fence = max(self._last_fence + 1, time.time_ns() // 1000)
        return self._last_fence

    def last_fence(self) -> int:
        """The latest fencing token given (0: none yet)."""
        return self._last_fence

    def hold(self, key: str, now: float) -> _Hold | None:
        """The live holder of ``key``, dropping one whose lease ran out."""
        hold = self._holds.get(key)
        if hold is not None and hold.expires <= now:
            del self._holds[key]
            return None
        return hold

    def was_released(self, token: str) -> bool:
        """Whether ``token`` released (or was cleaned up) recently."""
        return token in self._released

    def remember_release(self, token: str, now: float) -> None:
        """Keep ``token`` among the recent releases, dropping the oldest and expired."""
        released = self._released
        released.pop(token, None)  # a release sent again is the newest
        released[token] = now
        horizon = now - RELEASE_TOMBSTONE_MS / 1000
        while released:
            oldest, when = next(iter(released.items()))
            if when > horizon and len(released) <= _RECENT_RELEASES:
                break
            del released[oldest]

    def publish(self, channels: Iterable[str]) -> None:
        """Wake the waiters on ``channels``."""
        if self._notifier is not None:
            self._notifier.publish(channels)

    def wrote(self, now: float) -> None:
        """Count a write; sweep expired entries every so often."""
        self._writes += 1
        if self._writes % _SWEEP_EVERY:
            return
        for key in [key for key, hold in self._holds.items() if hold.expires <= now]:
            del self._holds[key]
        for key, state in list(self._semaphores.items()):
            _drop_expired(state.holders, now)
            if not state.holders:
                del self._semaphores[key]
        for key in [key for key, landed in self._landed.items() if landed.expires <= now]:
            del self._landed[key]
        for key in [key for key in self._announced if self.hold(key, now) is None]:
            del self._announced[key]
        for key, rw in list(self._rwlocks.items()):
            _tidy(rw, now)
            if rw.writer is None and not rw.readers and not rw.line:
                del self._rwlocks[key]


def _drop_expired(holders: dict[str, _Hold], now: float) -> None:
    for token in [token for token, hold in holders.items() if hold.expires <= now]:
        del holders[token]


def _tidy(rw: _ReadWrite, now: float) -> None:
    """Drop a read-write lock's expired holders and lapsed places in line."""
    if rw.writer is not None and rw.writer.expires <= now:
        rw.writer = None
    _drop_expired(rw.readers, now)
    for member in [member for member, (_, lapse) in rw.line.items() if lapse <= now]:
        del rw.line[member]


def _retry_after(expires: float, now: float) -> float | None:
    return expires - now if expires > now else None


@dataclass(frozen=True, slots=True, eq=False)
class MemoryLocks(ExclusiveNames):
    """The exclusive locks over ``names`` in a :class:`MemoryBackend` (``Mutex``,
    ``MultiLock``): all names at once, or none."""

    store: MemoryBackend
    names: tuple[str, ...]
    #: One key per name, as a Redis lock's owner keys: also the channels.
    owner_keys: tuple[str, ...]

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take every name for ``token``, or report how long the holder has.

        A name already holding ``token`` counts as ours (a retried acquire), with a
        fresh TTL and its fencing token. One process has no line: ``waiter`` and
        ``place`` change nothing.
        """
        store, now = self.store, time.monotonic()
        if store.was_released(token):
            return Grant(False, ())
        for key in self.owner_keys:
            hold = store.hold(key, now)
            if hold is not None and hold.token != token:
                return Grant(False, (), _retry_after(hold.expires, now))
        expires = now + ttl_ms / 1000
        fences = []
        for key in self.owner_keys:
            hold = store.hold(key, now)
            if hold is None:
                hold = store._holds[key] = _Hold(token, expires, store.fence())
            hold.expires = expires
            fences.append(hold.fence)
        store.wrote(now)
        return Grant(True, tuple(fences))

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset every name's TTL if ``token`` still holds them all; never re-take."""
        store, now = self.store, time.monotonic()
        holds = [store.hold(key, now) for key in self.owner_keys]
        if any(hold is None or hold.token != token for hold in holds):
            return False
        for hold in holds:
            assert hold is not None
            hold.expires = now + ttl_ms / 1000
        return True

    async def release(self, client: Any, token: str) -> bool:
        """Free the names ``token`` holds; report whether it held them all."""
        return self._release(token, time.monotonic())

    def _release(self, token: str, now: float) -> bool:
        store = self.store
        repeated = store.was_released(token)
        held = 0
        for key in self.owner_keys:
            hold = store.hold(key, now)
            if hold is not None and hold.token == token:
                del store._holds[key]
                held += 1
        store.remember_release(token, now)
        if held:
            store.publish(self.owner_keys)
        return held == len(self.owner_keys) or (held == 0 and repeated)

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Give every name straight to ``to`` if ``token`` holds them all and ``to``
        has not given up; otherwise release."""
        store, now = self.store, time.monotonic()
        holds = [store.hold(key, now) for key in self.owner_keys]
        if (
            not to.token
            or store.was_released(to.token)
            or any(hold is None or hold.token != token for hold in holds)
        ):
            return HandOver(self._release(token, now), None)
        fences = []
        for hold in holds:
            assert hold is not None
            hold.token, hold.expires, hold.fence = to.token, now + to.ttl_ms / 1000, store.fence()
            fences.append(hold.fence)
        store.remember_release(token, now)
        return HandOver(True, tuple(fences))

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Nothing: one process keeps no line."""

    async def locked(self, client: Any) -> bool:
        """Whether any of the names is held."""
        now = time.monotonic()
        return any(self.store.hold(key, now) is not None for key in self.owner_keys)


@dataclass(frozen=True, slots=True, eq=False)
class MemorySemaphore(SemaphoreShape):
    """``permits`` of a semaphore of ``limit`` in a :class:`MemoryBackend`."""

    store: MemoryBackend
    name: str
    key: str
    limit: int
    permits: int

    def _state(self, now: float) -> _Permits | None:
        state = self.store._semaphores.get(self.key)
        if state is not None:
            _drop_expired(state.holders, now)
        return state

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take the permits for ``token`` if enough are free.

        :raises LimitMismatch: live holders use another limit
        """
        store, now = self.store, time.monotonic()
        if store.was_released(token):
            return Grant(False, ())
        state = self._state(now)
        if state is None or not state.holders:
            state = store._semaphores[self.key] = _Permits(self.limit)
        hold = state.holders.get(token)
        if hold is not None:
            hold.expires = now + ttl_ms / 1000
            return Grant(True, (hold.fence,))
        if state.limit != self.limit:
            raise LimitMismatch(self.name, self.limit, state.limit)
        in_use = sum(hold.permits for hold in state.holders.values())
        if in_use + self.permits > self.limit:
            first = min(hold.expires for hold in state.holders.values())
            return Grant(False, (), _retry_after(first, now))
        hold = _Hold(token, now + ttl_ms / 1000, store.fence(), self.permits)
        state.holders[token] = hold
        store.wrote(now)
        return Grant(True, (hold.fence,))

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it is still live; never revive it."""
        now = time.monotonic()
        state = self._state(now)
        hold = None if state is None else state.holders.get(token)
        if hold is None:
            return False
        hold.expires = now + ttl_ms / 1000
        return True

    async def release(self, client: Any, token: str) -> bool:
        """Give the permits back; report whether the holder was still live."""
        store, now = self.store, time.monotonic()
        repeated = store.was_released(token)
        state = self._state(now)
        held = state is not None and state.holders.pop(token, None) is not None
        store.remember_release(token, now)
        if held:
            store.publish(self.channels)
        return held or repeated

    async def inspect(self, client: Any) -> tuple[int, int, int]:
        """Return live holders, permits in use, and the limit in force (-1: none)."""
        state = self._state(time.monotonic())
        if state is None or not state.holders:
            return 0, 0, -1
        return len(state.holders), sum(h.permits for h in state.holders.values()), state.limit


@dataclass(frozen=True, slots=True, eq=False)
class MemorySide(SideShape):
    """One side (``"r"`` or ``"w"``) of a read-write lock in a :class:`MemoryBackend`.

    The rule is Redis's (``scripts/rw_acquire.lua``): nobody ahead of the caller may
    be in its way. A reader enters unless a writer holds, or a writer waits ahead of
    it in line; a writer enters unless anyone holds, or anyone waits ahead of it.
    """

    store: MemoryBackend
    name: str
    base: str
    mode: Mode

    def _state(self, now: float) -> _ReadWrite:
        rw = self.store._rwlocks.get(self.base)
        if rw is None:
            # Not stored until something is written: reads leave nothing behind.
            return _ReadWrite()
        _tidy(rw, now)
        return rw

    def _stored(self, rw: _ReadWrite) -> None:
        self.store._rwlocks.setdefault(self.base, rw)

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take this side for ``token`` if nobody ahead is in the way."""
        store, now = self.store, time.monotonic()
        if store.was_released(token):
            return Grant(False, ())
        rw = self._state(now)
        member = f"{self.mode}:{waiter}" if waiter else ""
        expires = now + ttl_ms / 1000
        hold = rw.writer if self.mode == "w" else rw.readers.get(token)
        if hold is not None and hold.token == token:
            hold.expires = expires
            return self._granted(rw, member, place, hold.fence, now)
        arrival = rw.line[member][0] if member in rw.line else None
        ahead = [m for m, (at, _) in rw.line.items() if arrival is None or at < arrival]
        retry_after: float | None = None
        refused = False
        if rw.writer is not None:
            refused, retry_after = True, _retry_after(rw.writer.expires, now)
        elif self.mode == "r":
            refused = any(m.startswith("w:") for m in ahead)
        elif rw.readers:
            first = min(reader.expires for reader in rw.readers.values())
            refused, retry_after = True, _retry_after(first, now)
        else:
            refused = bool(ahead)
        if refused:
            if member:
                at = rw.line[member][0] if member in rw.line else now
                rw.line[member] = (at, now + PLACE_MS / 1000)
                self._stored(rw)
            return Grant(False, (), retry_after)
        self._stored(rw)
        if self.mode == "w":
            rw.last_fence = store.fence()
            rw.writer = _Hold(token, expires, rw.last_fence)
        else:
            rw.readers[token] = _Hold(token, expires, rw.last_fence)
        store.wrote(now)
        return self._granted(rw, member, place, rw.last_fence, now)

    @staticmethod
    def _granted(rw: _ReadWrite, member: str, place: Place, fence: int, now: float) -> Grant:
        if member and place is Place.LEAVE:
            rw.line.pop(member, None)
        elif member and place is Place.BACK:
            rw.line.pop(member, None)  # re-inserted last: behind the others
            rw.line[member] = (now, now + PLACE_MS / 1000)
        return Grant(True, (fence,))

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it still holds; never revive it."""
        now = time.monotonic()
        rw = self._state(now)
        hold = rw.writer if self.mode == "w" else rw.readers.get(token)
        if hold is None or hold.token != token:
            return False
        hold.expires = now + ttl_ms / 1000
        return True

    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds; report whether it still held it."""
        store, now = self.store, time.monotonic()
        repeated = store.was_released(token)
        rw = self._state(now)
        held = False
        if self.mode == "w" and rw.writer is not None and rw.writer.token == token:
            rw.writer, held = None, True
        elif self.mode == "r":
            held = rw.readers.pop(token, None) is not None
        store.remember_release(token, now)
        if held:
            store.publish((f"{self.base}:read", f"{self.base}:write"))
        return held or repeated

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up this side's place in line, waking the others."""
        rw = self._state(time.monotonic())
        if rw.line.pop(f"{self.mode}:{waiter}", None) is not None:
            self.store.publish((f"{self.base}:read", f"{self.base}:write"))

    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Return whether a writer holds, the live readers, and the writers waiting."""
        rw = self._state(time.monotonic())
        writers = sum(1 for member in rw.line if member.startswith("w:"))
        return rw.writer is not None, len(rw.readers), writers


@dataclass(frozen=True, slots=True, eq=False)
class MemoryOutcomes:
    """A single flight's outcome in a :class:`MemoryBackend`, beside its lease (a
    ``Mutex``'s on ``owner``). The rule is ``scripts/look.lua``'s."""

    store: MemoryBackend
    owner: str
    key: str

    @property
    def channels(self) -> tuple[str, ...]:
        """The lease's release channel and the landing's."""
        return (self.owner, self.key)

    async def look(self, client: Any, floor: str) -> tuple[int, str, Any]:
        """What a caller finds: an outcome to take, a leader at work, or nobody.

        Fencing tokens come from one counter for the whole backend, so "the next
        lease's fence" is at least one more than the latest given on any name.
        """
        store, now = self.store, time.monotonic()
        hold = store.hold(self.owner, now)
        landed = store._landed.get(self.key)
        if landed is not None and landed.expires <= now:
            del store._landed[self.key]
            landed = None
        landed_fence = -1 if landed is None else landed.fence
        lowest = int(floor) if floor else store.last_fence() + 1
        if not floor and hold is not None and landed_fence != hold.fence:
            lowest = hold.fence  # the flight under way, not landed yet
        if landed is not None and (landed.fence >= lowest or now < landed.until):
            return 2, str(lowest), landed.outcome
        if hold is not None:
            if landed_fence == hold.fence:
                return 1, str(lowest), 0  # landed; its leader is releasing
            return 1, str(lowest), max(1, round((hold.expires - now) * 1000))
        return 0, str(lowest), -2

    async def land(
        self, client: Any, token: str, fence: int, outcome: bytes, keep_ms: int, grace_ms: int
    ) -> bool:
        """Store ``outcome`` if ``token`` still holds the lease; wake the followers."""
        store, now = self.store, time.monotonic()
        hold = store.hold(self.owner, now)
        if hold is None or hold.token != token:
            return False
        expires = now + max(keep_ms, grace_ms) / 1000
        store._landed[self.key] = _Landed(fence, now + keep_ms / 1000, expires, bytes(outcome))
        store.wrote(now)
        store.publish((self.key,))
        return True

    async def wake(self, client: Any) -> None:
        """Wake the followers: one of them leads now."""
        self.store.publish((self.key,))


@dataclass(frozen=True, slots=True, eq=False)
class MemoryLeadership:
    """An election's announcement in a :class:`MemoryBackend`, beside its lease (a
    ``Mutex``'s on ``owner``)."""

    store: MemoryBackend
    owner: str
    key: str

    async def announce(self, client: Any, token: str, announcement: str) -> bool:
        """Store and publish ``announcement`` if ``token`` holds the lease."""
        store, now = self.store, time.monotonic()
        hold = store.hold(self.owner, now)
        if hold is None or hold.token != token:
            return False
        store._announced[self.owner] = (token, announcement)
        store.wrote(now)
        store.publish((self.key,))
        return True

    async def leader(self, client: Any) -> tuple[Any, Any] | None:
        """The holder's token and its announcement (``None`` if not made yet)."""
        hold = self.store.hold(self.owner, time.monotonic())
        if hold is None:
            return None
        announced = self.store._announced.get(self.owner)
        return hold.token, None if announced is None else announced[1]

    async def tell_watchers(self, client: Any) -> None:
        """Wake the watchers: the leader stepped down."""
        self.store.publish((self.key,))

    def changes(self, client: Any) -> AbstractAsyncContextManager[Heard]:
        """A subscription to announcements and step-downs, for a watcher."""
        return heard(self.store.notifications(), (self.key, self.owner))
