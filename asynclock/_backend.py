"""Where locks are kept: the :class:`Backend` boundary, and Redis behind it.

The lease lifecycle (acquiring, waiting, the watchdog, release and hand-over) talks
to :class:`~asynclock._resource.Resource` objects only. A backend is what makes them:
the resources of a primitive's names, and the notifier its waiters hear releases by.
So a primitive asks its backend for its resources once, at construction, and from
then on nothing in the lifecycle knows which store it runs on.

A primitive's first argument is "the client": a ``redis.asyncio`` client (which
``backend_for`` in ``_redis.py`` wraps in a ``RedisBackend``) or any :class:`Backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Protocol

import redis
import redis.asyncio

from ._notify import Notifications
from ._resource import Resource
from ._shapes import Mode


class Counted(Resource, Protocol):
    """A resource that can report its holders: a semaphore's permits."""

    async def inspect(self, client: Any) -> tuple[int, int, int]:
        """Return live holders, permits in use, and the limit in force (-1: none)."""
        ...


class Sides(Resource, Protocol):
    """A resource that can report its holders: one side of a read-write lock."""

    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Return whether a writer holds, the live readers, and the writers waiting."""
        ...


class Outcomes(Protocol):
    """Where a single flight lands its job's outcome, beside its lease (a ``Mutex``'s
    on the same name); see ``_flight.py`` for the rule the floor follows."""

    @property
    def channels(self) -> tuple[str, ...]:
        """The lease's release channel and the landing's: what followers watch."""
        ...

    async def look(self, client: Any, floor: str) -> tuple[int, str, Any]:
        """What a caller finds: ``(2, floor, outcome)`` to take, ``(1, floor, pttl)``
        while a leader holds the lease (0: landed, releasing), ``(0, floor, -2)`` when
        nobody does. ``floor`` is ``""`` on arrival, then what the first look said."""
        ...

    async def land(
        self, client: Any, token: str, fence: int, outcome: bytes, keep_ms: int, grace_ms: int
    ) -> bool:
        """Store ``outcome`` if ``token`` still holds the lease, and wake the followers;
        late arrivals may take it for ``keep_ms``, waiting followers for ``grace_ms``."""
        ...

    async def wake(self, client: Any) -> None:
        """Wake the followers: the leader left without landing (one of them leads)."""
        ...


class Changes(Protocol):
    """A watcher's subscription to an election's changes."""

    async def next(self, seconds: float) -> None:
        """Return at the next change heard of, or after ``seconds``."""
        ...


class Leadership(Protocol):
    """Who leads an election: the announcement beside its lease (a ``Mutex``'s)."""

    async def announce(self, client: Any, token: str, announcement: str) -> bool:
        """Store and publish ``announcement`` if ``token`` holds the lease."""
        ...

    async def leader(self, client: Any) -> tuple[Any, Any] | None:
        """The lease's holder token and the announcement (``None`` if not made yet)
        in one step; ``None`` when nobody holds the lease."""
        ...

    async def tell_watchers(self, client: Any) -> None:
        """Tell watchers of a step-down (best effort)."""
        ...

    def changes(self, client: Any) -> AbstractAsyncContextManager[Changes]:
        """A subscription to announcements and step-downs, for a watcher."""
        ...


class Backend(ABC):
    """A lock store: where leases are kept, and how waiters hear of releases.

    Pass one wherever a primitive takes a client (``Mutex(backend, "jobs:report")``).
    :func:`~asynclock.connect` makes one from a URL; :class:`~asynclock.MemoryBackend`
    and :class:`RedisBackend` can be made directly. ``async with backend:`` closes
    what it opened.
    """

    #: The kind of store: ``"redis"``, ``"postgresql"`` or ``"memory"``.
    kind: ClassVar[str]
    #: Whether its locks exclude other processes (not so in memory).
    spans_processes: ClassVar[bool]
    #: Whether it can wait for replicas to acknowledge (a lock's ``replicas=``).
    waits_for_replicas: ClassVar[bool] = False

    #: The store asked for, when :func:`~asynclock.connect` fell back from it (its URL
    #: without credentials); ``None`` when this is the store asked for.
    fell_back_from: str | None = None

    @property
    def client(self) -> Any:
        """What the resources' calls receive as their client (the backend itself,
        unless it wraps a client library's)."""
        return self

    @abstractmethod
    def locks(self, prefix: str, names: tuple[str, ...]) -> Resource:
        """The exclusive locks over ``names`` (a ``Mutex``, a ``MultiLock``)."""

    @abstractmethod
    def semaphore(self, prefix: str, name: str, limit: int, permits: int) -> Counted:
        """``permits`` of the semaphore ``name`` of ``limit`` permits."""

    @abstractmethod
    def read_write(self, prefix: str, name: str, mode: Mode) -> Sides:
        """One side, ``"r"`` or ``"w"``, of the read-write lock ``name``."""

    @abstractmethod
    def outcomes(self, prefix: str, name: str) -> Outcomes:
        """The outcome of the single flight ``name``."""

    @abstractmethod
    def leadership(self, prefix: str, name: str) -> Leadership:
        """The leader of the election ``name``."""

    @abstractmethod
    def notifications(self) -> Notifications | None:
        """The notifier of this process's waiters on the running loop, or ``None``
        when they must poll."""

    async def aclose(self) -> None:  # noqa: B027 (most backends open nothing)
        """Close what the backend opened (nothing, unless it made its own client)."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def check_client(client: object) -> None:
    """Refuse anything but a backend or a redis-py asyncio client, before any command."""
    # The common case first: an isinstance check against redis-py's asyncio clients is
    # fast, where the one against its synchronous clients (classes deriving from
    # typing protocols) takes a microsecond, at every lock object made per request.
    if isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster, Backend)):
        return
    if client is None:
        raise TypeError("client must be a redis.asyncio client or a Backend, not None")
    if isinstance(client, (redis.Redis, redis.RedisCluster)):
        raise TypeError(
            "asynclock needs an asyncio client: use redis.asyncio.Redis "
            "(or redis.asyncio.RedisCluster), not the synchronous redis.Redis"
        )
    # Other clients (valkey-py, coredis, ...) raise their own exception types, which
    # asynclock could neither retry nor map to LockBackendError.
    raise TypeError(
        "client must be a redis-py asyncio client (redis.asyncio.Redis, or "
        "redis.asyncio.RedisCluster) or an asynclock Backend, not "
        f"{type(client).__module__}.{type(client).__name__}"
    )
