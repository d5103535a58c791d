"""Locks on PostgreSQL: :class:`PostgresBackend`, on asyncpg (the ``postgres`` extra).

``pip install 'asynclock[postgres]'``, then ``await connect("postgresql://...")`` or
``await PostgresBackend.connect(dsn)``.

Leases are rows (``sql/schema.sql``): a name's token, its fencing token and its expiry
on the database clock, so TTL, auto-extend, loss and fencing mean what they mean on
Redis. Every operation is one call of a function installed with the schema: one round
trip, atomic, on a connection borrowed from the pool for that call only. No
connection is held while a lock is held, and no session state is used (no session
advisory locks), so it works behind PgBouncer in transaction mode.

Waiters are woken by ``LISTEN``/``NOTIFY``: one connection per backend listens on
the channel ``asynclock``; a release notifies the SHA-224 of its channel. Notifications
are at most once (a lost listening connection misses some): waiters keep their
bounded fallback re-check, and every waiter is woken to re-check when the listening
connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import secrets
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import asyncpg

from ._aio import spawn
from ._backend import Backend
from ._errors import LimitMismatch
from ._names import PLACE_MS, base_key, owner_key
from ._notify import Heard, heard
from ._resource import BackendFailure, Grant, HandOver, Place, Successor
from ._shapes import ExclusiveNames, Mode, SemaphoreShape, SideShape

__all__ = ["PostgresBackend"]

_log = logging.getLogger("asynclock")

#: The one channel every release is notified on (its payload says which).
CHANNEL: Final = "asynclock"
# The transaction lock under which replicas starting together install the schema.
_SCHEMA_LOCK: Final = 0x6173796E636C6F63  # "asynclock"
# How long a waiter's subscription waits for the listening connection; the pauses
# before listening again after the connection was lost.
_LISTEN_TIMEOUT: Final = 2.0
_RELISTEN_PAUSES: Final = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)
# How many calls between sweeps of rows nobody needs any more (``sweep`` in the SQL).
_SWEEP_EVERY: Final = 1000
# The longest key accepted (a btree entry holds at most about 2.7 kB).
_LONGEST_KEY: Final = 2000

# SQLSTATE classes of a database that is going away, not there yet, or just demoted:
# 08 connection exceptions, 57P01-57P03 shutdowns and startup, 53 insufficient
# resources (too many connections), 40001/40P01 serialisation failures and deadlocks,
# 25006 a read-only transaction (a primary turned standby, as Redis's READONLY).
_TRANSIENT_STATES: Final = ("08", "57P", "53", "40001", "40P01", "25006")

#: What an asyncpg call may raise: the server's errors, the client's (a closed
#: connection, a protocol or schema-cache problem), a socket's, a connect timeout.
DRIVER_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# A connection that could not be made, timed out or was lost; a stale cache of the
# schema (after the functions were replaced), which the next call refreshes.
_TRANSIENT_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InternalClientError,
)


def _failure(error: BaseException) -> BackendFailure:
    """The library's error for an asyncpg (or socket) error, marked transient or not."""
    state = getattr(error, "sqlstate", None) or ""
    transient = isinstance(error, _TRANSIENT_ERRORS) or state.startswith(_TRANSIENT_STATES)
    failure = BackendFailure(f"{type(error).__name__}: {error}", transient=transient)
    failure.__cause__ = error
    return failure


def _digest(channel: str) -> str:
    """A release's NOTIFY payload for ``channel`` (``wake`` in ``sql/schema.sql``)."""
    return hashlib.sha224(channel.encode()).hexdigest()


class PostgresNotifier:
    """This process's waiters, woken by ``NOTIFY asynclock`` on one connection."""

    def __init__(self, backend: PostgresBackend) -> None:
        #: The id of this process's waiters (releases on PostgreSQL wake everyone).
        self.id = secrets.token_hex(8)
        #: The event loop its listening connection and events belong to.
        self.loop = asyncio.get_running_loop()
        self._backend = backend
        self._events: dict[str, set[asyncio.Event]] = {}  # by digest of the channel
        self._connection: Any = None
        self._connecting = asyncio.Lock()

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Have ``event`` set by releases on ``channels``, once the database listens.

        If it cannot listen now, the waiter re-checks on its own (its fallback)."""
        for channel in channels:
            self._events.setdefault(_digest(channel), set()).add(event)
        try:
            await asyncio.wait_for(self._listening(), _LISTEN_TIMEOUT)
        except DRIVER_ERRORS as exc:
            _log.debug("listening for releases failed; waiters re-check: %r", exc)
        except BaseException:
            self.unwatch(channels, event)
            raise

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Stop setting ``event`` on releases on ``channels``."""
        for channel in channels:
            digest = _digest(channel)
            events = self._events.get(digest)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[digest]

    async def _listening(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            return
        async with self._connecting:
            if self._connection is not None and not self._connection.is_closed():
                return
            connection = await asyncpg.connect(
                self._backend.dsn, **_connect_options(self._backend.options)
            )
            try:
                connection.add_termination_listener(self._lost)
                await connection.add_listener(CHANNEL, self._heard)
            except BaseException:  # cancelled or failed: the connection is nobody's
                connection.terminate()
                raise
            self._connection = connection

    def _heard(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        for event in self._events.get(payload, ()):
            event.set()

    def _lost(self, connection: Any) -> None:
        """The listening connection is gone: every waiter re-checks now (releases in
        the gap were not heard), and listening starts again while anyone waits."""
        if self._connection is connection:
            self._connection = None
        for events in self._events.values():
            for event in events:
                event.set()
        if self._events and not self.loop.is_closed():
            spawn(self._listen_again(), "listening for releases again")

    async def _listen_again(self) -> None:
        # Bounded: a database down for longer leaves waiters on their re-checks, and
        # the next watch tries again.
        for pause in _RELISTEN_PAUSES:
            await asyncio.sleep(pause)
            if not self._events:
                return
            try:
                await asyncio.wait_for(self._listening(), _LISTEN_TIMEOUT)
                return
            except DRIVER_ERRORS as exc:
                _log.debug("listening for releases again failed: %r", exc)

    def forget(self) -> None:
        """Drop the listening connection of a loop that has ended (nothing to await)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.terminate()

    async def aclose(self) -> None:
        """Stop listening."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(timeout=2.0)


class PostgresBackend(Backend):
    """Locks on PostgreSQL, through an asyncpg pool; make one with :meth:`connect`
    (or ``asynclock.connect("postgresql://...")``).

    Every primitive, ``@locked`` and the events work on it, with the same promises as
    on Redis: exclusion across processes, TTLs on the database clock, fencing tokens,
    loss, hand-over inside a process, notified waiters (``LISTEN``/``NOTIFY``).
    """

    kind = "postgresql"
    spans_processes = True

    def __init__(self, pool: Any, dsn: str, options: dict[str, Any]) -> None:
        #: The asyncpg pool every call borrows a connection from, for that call only.
        self.pool = pool
        #: Where the listening connection connects (a session: ``LISTEN`` needs one).
        self.dsn = dsn
        #: The connection options given to :meth:`connect`.
        self.options = options
        self._notifier: PostgresNotifier | None = None
        self._calls = 0

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.pool!r}>"

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        max_connections: int = 10,
        install_schema: bool = True,
        listen_dsn: str | None = None,
        **options: Any,
    ) -> PostgresBackend:
        """Open a pool to ``dsn`` and install the schema ``asynclock`` if needed.

        :param dsn: a ``postgresql://`` URL, as asyncpg reads it
        :param max_connections: the pool's size (each call borrows one briefly)
        :param install_schema: create or update the schema's tables and functions now
            (``sql/schema.sql``, idempotent; it needs the CREATE privilege on the
            database). ``False`` when a migration, run once by an administrator,
            installed it: the role then needs only USAGE on the schema, EXECUTE on
            its functions and SELECT, INSERT, UPDATE, DELETE on its tables
        :param listen_dsn: where the connection that listens for releases goes, if
            not ``dsn``: ``LISTEN`` needs a session of its own, which a pooler in
            transaction mode (PgBouncer) does not keep, so point it at PostgreSQL
            itself (or a session-mode pool)
        :param options: passed to ``asyncpg.create_pool`` and ``asyncpg.connect``
            (``statement_cache_size=0`` behind a pooler without prepared statements)
        """
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=max_connections, **options)
        try:
            if install_schema:
                async with pool.acquire() as connection, connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    await connection.execute(_schema())
            else:  # the schema must be there: fail now, not at the first lock
                await pool.fetchval("SELECT 'asynclock.acquire'::regproc")
        except BaseException:
            await pool.close()
            raise
        return cls(pool, listen_dsn or dsn, options)

    def _checked(self, *keys: str) -> None:
        # Refused before anything is sent: text in PostgreSQL cannot hold NUL, and a
        # key past a btree entry's size cannot be indexed.
        for key in keys:
            if "\x00" in key:
                raise ValueError("a lock name on PostgreSQL cannot contain NUL characters")
            if len(key.encode()) > _LONGEST_KEY:
                raise ValueError(
                    f"a lock name on PostgreSQL must be shorter: its key has more than"
                    f" {_LONGEST_KEY} bytes"
                )

    def locks(self, prefix: str, names: tuple[str, ...]) -> PostgresLocks:
        """The exclusive locks over ``names``."""
        keys = tuple(owner_key(prefix, name) for name in names)
        self._checked(*keys)
        return PostgresLocks(self, names, keys)

    def semaphore(self, prefix: str, name: str, limit: int, permits: int) -> PostgresSemaphore:
        """``permits`` of the semaphore ``name`` of ``limit`` permits."""
        key = base_key(prefix, "semaphore", name)
        self._checked(key)
        return PostgresSemaphore(self, name, key, limit, permits)

    def read_write(self, prefix: str, name: str, mode: Mode) -> PostgresSide:
        """One side of the read-write lock ``name``."""
        base = base_key(prefix, "rwlock", name)
        self._checked(base)
        return PostgresSide(self, name, base, mode)

    def outcomes(self, prefix: str, name: str) -> PostgresOutcomes:
        """The outcome of the single flight ``name``."""
        owner, key = owner_key(prefix, name), base_key(prefix, "flight", name)
        self._checked(owner)
        return PostgresOutcomes(self, owner, key)

    def leadership(self, prefix: str, name: str) -> PostgresLeadership:
        """The leader of the election ``name``."""
        owner, key = owner_key(prefix, name), base_key(prefix, "leader", name)
        self._checked(owner)
        return PostgresLeadership(self, owner, key)

    def notifications(self) -> PostgresNotifier:
        """The notifier of the running loop's waiters."""
        notifier = self._notifier
        if notifier is None or notifier.loop is not asyncio.get_running_loop():
            if notifier is not None:
                notifier.forget()
            notifier = self._notifier = PostgresNotifier(self)
        return notifier

    async def aclose(self) -> None:
        """Close the listening connection and the pool."""
        if self._notifier is not None:
            await self._notifier.aclose()
        await self.pool.close()

    async def call(self, query: str, *args: Any) -> Any:
        """Run ``query`` on a connection of the pool; return its first value."""
        self._count()
        try:
            return await self.pool.fetchval(query, *args)
        except DRIVER_ERRORS as exc:
            raise _failure(exc) from exc

    async def row(self, query: str, *args: Any) -> Any:
        """Run ``query`` on a connection of the pool; return its first row."""
        self._count()
        try:
            return await self.pool.fetchrow(query, *args)
        except DRIVER_ERRORS as exc:
            raise _failure(exc) from exc

    def _count(self) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            spawn(self._sweep(), "sweeping asynclock's tables")

    async def _sweep(self) -> None:
        try:
            await self.pool.execute(_SWEEP)
        except DRIVER_ERRORS as exc:
            _log.debug("sweeping asynclock's tables failed: %r", exc)


def _schema() -> str:
    return resources.files("asynclock").joinpath("sql", "schema.sql").read_text()


def _grant(reply: list[int]) -> Grant:
    if reply[0] == 1:
        return Grant(True, tuple(reply[1:]))
    return Grant(False, (), reply[1] / 1000 if reply[1] > 0 else None)


@dataclass(frozen=True, slots=True, eq=False)
class PostgresLocks(ExclusiveNames):
    """The exclusive locks over ``names`` on PostgreSQL: all at once, or none."""

    store: PostgresBackend
    names: tuple[str, ...]
    owner_keys: tuple[str, ...]

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take every name for ``token``, or report how long the holder has. A release
        wakes every waiting process: there is no line (``waiter``, ``place`` unused)."""
        return _grant(await self.store.call(_ACQUIRE, list(self.owner_keys), token, ttl_ms))

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset every name's expiry if ``token`` still holds them all."""
        return bool(await self.store.call(_EXTEND, list(self.owner_keys), token, ttl_ms))

    async def release(self, client: Any, token: str) -> bool:
        """Free the names ``token`` holds; report whether it held them all."""
        return bool(await self.store.call(_RELEASE, list(self.owner_keys), token))

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Give every name straight to ``to``, or release.

        Without a line across processes, a process cannot tell whether others wait:
        once its run of hand-overs is over (``to.jump_line`` false), it releases, and
        every waiting process, its own included, is woken to try.
        """
        if not to.jump_line:
            return HandOver(await self.release(client, token), None)
        reply = await self.store.call(_HAND_OVER, list(self.owner_keys), token, to.token, to.ttl_ms)
        if len(reply) > 1:
            return HandOver(True, tuple(reply[1:]))
        return HandOver(bool(reply[0]), None)

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Nothing: there is no line."""

    async def locked(self, client: Any) -> bool:
        """Whether any of the names is held."""
        return bool(await self.store.call(_LOCKED, list(self.owner_keys)))


@dataclass(frozen=True, slots=True, eq=False)
class PostgresSemaphore(SemaphoreShape):
    """``permits`` of a semaphore of ``limit`` on PostgreSQL."""

    store: PostgresBackend
    name: str
    key: str
    limit: int
    permits: int

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take the permits for ``token`` if enough are free.

        :raises LimitMismatch: live holders use another limit
        """
        args = (self.key, token, ttl_ms, self.limit, self.permits)
        reply = await self.store.call(_SEM_ACQUIRE, *args)
        if reply[0] == -1:
            raise LimitMismatch(self.name, self.limit, reply[1])
        return _grant(reply)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it is still live."""
        return bool(await self.store.call(_SEM_EXTEND, self.key, token, ttl_ms))

    async def release(self, client: Any, token: str) -> bool:
        """Give the permits back; report whether the holder was still live."""
        return bool(await self.store.call(_SEM_RELEASE, self.key, token))

    async def inspect(self, client: Any) -> tuple[int, int, int]:
        """Return live holders, permits in use, and the limit in force (-1: none)."""
        holders, in_use, limit = await self.store.call(_SEM_INSPECT, self.key)
        return int(holders), int(in_use), int(limit)


@dataclass(frozen=True, slots=True, eq=False)
class PostgresSide(SideShape):
    """One side (``"r"`` or ``"w"``) of a read-write lock on PostgreSQL, with Redis's
    rule (``rw_acquire`` in ``sql/schema.sql``)."""

    store: PostgresBackend
    name: str
    base: str
    mode: Mode

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take this side for ``token`` if nobody ahead is in the way."""
        who = f"{self.mode}:{waiter}" if waiter else ""
        args = (self.base, token, ttl_ms, self.mode, who, str(place), PLACE_MS)
        return _grant(await self.store.call(_RW_ACQUIRE, *args))

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it still holds."""
        return bool(await self.store.call(_RW_EXTEND, self.base, token, ttl_ms, self.mode))

    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds; report whether it still held it."""
        return bool(await self.store.call(_RW_RELEASE, self.base, token, self.mode))

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up the process's place in line, waking the others."""
        await self.store.call(_RW_LEAVE, self.base, f"{self.mode}:{waiter}")

    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Return whether a writer holds, the live readers, and the writers waiting."""
        writer, readers, writers = await self.store.call(_RW_INSPECT, self.base)
        return bool(writer), int(readers), int(writers)


@dataclass(frozen=True, slots=True, eq=False)
class PostgresOutcomes:
    """A single flight's outcome on PostgreSQL, beside its lease (``owner``)."""

    store: PostgresBackend
    owner: str
    key: str

    @property
    def channels(self) -> tuple[str, ...]:
        """The lease's release channel and the landing's."""
        return (self.owner, self.key)

    async def look(self, client: Any, floor: str) -> tuple[int, str, Any]:
        """What a caller finds (``look`` in ``sql/schema.sql``)."""
        row = await self.store.row(_LOOK, self.owner, self.key, int(floor) if floor else None)
        kind, lowest, ms, outcome = row
        return kind, str(lowest), outcome if kind == 2 else ms

    async def land(
        self, client: Any, token: str, fence: int, outcome: bytes, keep_ms: int, grace_ms: int
    ) -> bool:
        """Store ``outcome`` if ``token`` still holds the lease; wake the followers."""
        args = (self.owner, self.key, token, fence, bytes(outcome), keep_ms, grace_ms)
        return bool(await self.store.call(_LAND, *args))

    async def wake(self, client: Any) -> None:
        """Wake the followers: one of them leads now."""
        await self.store.call(_WAKE, self.key)


@dataclass(frozen=True, slots=True, eq=False)
class PostgresLeadership:
    """An election's announcement on PostgreSQL, beside its lease (``owner``)."""

    store: PostgresBackend
    owner: str
    key: str

    async def announce(self, client: Any, token: str, announcement: str) -> bool:
        """Store and publish ``announcement`` if ``token`` holds the lease."""
        return bool(await self.store.call(_ANNOUNCE, self.owner, self.key, token, announcement))

    async def leader(self, client: Any) -> tuple[Any, Any] | None:
        """The holder's token and its announcement (``None`` if not made yet)."""
        row = await self.store.row(_LEADER, self.owner)
        return None if row is None else (row[0], row[1])

    async def tell_watchers(self, client: Any) -> None:
        """Wake the watchers: the leader stepped down (best effort)."""
        with contextlib.suppress(BackendFailure):
            await self.store.call(_WAKE, self.key)

    def changes(self, client: Any) -> AbstractAsyncContextManager[Heard]:
        """A subscription to announcements and step-downs, for a watcher."""
        return heard(self.store.notifications(), (self.key, self.owner))


# The calls of the functions of sql/schema.sql.
_ACQUIRE: Final = "SELECT asynclock.acquire($1, $2, $3)"
_EXTEND: Final = "SELECT asynclock.extend($1, $2, $3)"
_RELEASE: Final = "SELECT asynclock.release($1, $2)"
_HAND_OVER: Final = "SELECT asynclock.hand_over($1, $2, $3, $4)"
_LOCKED: Final = (
    "SELECT EXISTS (SELECT 1 FROM asynclock.leases WHERE key = ANY ($1) AND expires_at > now())"
)
_SEM_ACQUIRE: Final = "SELECT asynclock.sem_acquire($1, $2, $3, $4, $5)"
_SEM_EXTEND: Final = "SELECT asynclock.sem_extend($1, $2, $3)"
_SEM_RELEASE: Final = "SELECT asynclock.sem_release($1, $2)"
_SEM_INSPECT: Final = "SELECT asynclock.sem_inspect($1)"
_RW_ACQUIRE: Final = "SELECT asynclock.rw_acquire($1, $2, $3, $4, $5, $6, $7)"
_RW_EXTEND: Final = "SELECT asynclock.rw_extend($1, $2, $3, $4)"
_RW_RELEASE: Final = "SELECT asynclock.rw_release($1, $2, $3)"
_RW_LEAVE: Final = "SELECT asynclock.rw_leave($1, $2)"
_RW_INSPECT: Final = "SELECT asynclock.rw_inspect($1)"
_LOOK: Final = "SELECT * FROM asynclock.look($1, $2, $3)"
_LAND: Final = "SELECT asynclock.land($1, $2, $3, $4, $5, $6, $7)"
_WAKE: Final = "SELECT asynclock.wake($1)"
_ANNOUNCE: Final = "SELECT asynclock.announce($1, $2, $3, $4)"
_LEADER: Final = "SELECT * FROM asynclock.leader($1)"
_SWEEP: Final = "SELECT asynclock.sweep()"


def _connect_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options ``asyncpg.connect`` takes, of those given for the pool."""
    accepted = inspect.signature(asyncpg.connect).parameters
    return {name: value for name, value in options.items() if name in accepted}
