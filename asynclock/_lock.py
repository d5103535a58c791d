"""``LeaseLock``: the face every primitive shares: acquire, wait, hold, extend, release.

A lock object describes a lock (its :class:`~asynclock._resource.Resource` and
settings); each ``acquire()`` runs an :class:`~asynclock._acquire.Acquisition` and
keeps the :class:`Lease` it makes, per task. ``async with`` guards its body with the
lease and ends it through :meth:`Lease.exit_body`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypedDict, TypeVar

from . import _events
from ._acquire import Acquisition
from ._backend import Backend
from ._errors import LockBackendError, LockError, LockNotAcquired, LockNotOwned
from ._lease import Lease
from ._queue import queue_for
from ._resource import BACKEND_ERRORS, Resource
from ._retry import RetryStrategy, never_gives_up
from ._timing import LeasePolicy, OnLost
from ._validate import check_optional_seconds

_T = TypeVar("_T")


class LockOptions(TypedDict, total=False):
    """The settings every primitive takes, as keywords (see :class:`~asynclock.Mutex`)."""

    ttl: float
    timeout: float | None
    blocking: bool
    auto_extend: bool
    extend_interval: float | None
    max_hold: float | None
    retry: RetryStrategy | None
    on_lost: OnLost | None
    hold_at_least: float | None
    replicas: int
    replica_timeout: float


@dataclass(frozen=True, slots=True)
class LockStatistics:
    """A snapshot of one lock object, taken by :meth:`~asynclock.Mutex.statistics`.

    Local knowledge only: no command is sent to take it.

    :ivar held: whether this object holds a live lease (for any of its tasks)
    :ivar waiting: coroutines of this process waiting for this lock (through any
        lock object on the same client) by notification; waiters that poll (a pool
        of one connection, a cluster of servers before Redis 7.0) are not counted
    :ivar remaining: seconds left on the lease of :attr:`~asynclock.Mutex.lease`
        (the current task's), 0 without one
    :ivar extensions: extensions of that lease so far
    :ivar acquisitions: acquisitions through this object so far
    :ivar hand_overs: how many of those got the lock straight from a release in this
        process (in the same script call)
    """

    held: bool
    waiting: int
    remaining: float
    extensions: int
    acquisitions: int
    hand_overs: int


class _Unset:
    """The type of :data:`_UNSET`."""


_UNSET: Final = _Unset()


class LeaseLock:
    """The shared face of every primitive: acquire, wait, hold, extend, release.

    A lock object describes a lock; each acquisition makes a :class:`Lease`, kept
    per task. Several tasks may share one lock object: each acquires and releases
    its own lease, with its own token, as separate contenders would. A task that
    already holds the lock through this object cannot acquire it again (the lock
    is not reentrant; waiting on oneself would never end).

    Which lease ``release()``, ``extend()``, ``owned`` and ``fencing_token`` mean: the
    current task's, or, if it has none, the object's only lease once the task that
    acquired it has finished (so ``await asyncio.create_task(lock.acquire())`` then
    ``await lock.release()`` works). See :attr:`lease`.
    """

    def __init__(
        self,
        backend: Backend,
        resource: Resource,
        *,
        ttl: float = 30.0,
        timeout: float | None = None,
        blocking: bool = True,
        auto_extend: bool = True,
        extend_interval: float | None = None,
        max_hold: float | None = None,
        retry: RetryStrategy | None = None,
        on_lost: OnLost | None = None,
        hold_at_least: float | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self._backend = backend
        # What the resource's calls take: the redis-py client, for Redis.
        self._client = backend.client
        self._resource = resource
        self._policy = LeasePolicy.build(
            ttl=ttl,
            extend_interval=extend_interval,
            auto_extend=auto_extend,
            max_hold=max_hold,
            on_lost=on_lost,
            hold_at_least=hold_at_least,
            replicas=replicas,
            replica_timeout=replica_timeout,
        )
        if replicas and not backend.waits_for_replicas:
            raise ValueError(
                f"replicas needs a store with replicas; this is a {backend.kind} backend"
            )
        self._timeout = check_optional_seconds(timeout, "timeout")
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
        self._blocking = blocking
        if retry is not None and not callable(getattr(retry, "delays", None)):
            raise TypeError("retry must be a retry strategy (an object with a delays() method)")
        # None: the default, which depends on how the waiter waits (see _acquire.py).
        self._retry = retry
        # Leases by the task that acquired them; an entry goes on release, or when
        # its task is done and its lease over (pruned at the next acquire).
        self._leases: dict[asyncio.Task[Any], Lease] = {}
        # The names, as channels, that a task may not wait for while it holds them.
        self._channel_set = frozenset(resource.channels)
        self._blocks = frozenset(resource.blocks)
        self._acquisitions = 0
        self._hand_overs = 0
        # What events say of this lock: its primitive, and the name template of the
        # @locked function that made it, if one did.
        self._primitive = type(self).__name__.lower()
        self._template: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._resource.description!r} ttl={self._policy.ttl}>"

    @property
    def key(self) -> str:
        """The lock's main Redis key: its first name's owner key, a semaphore's holders key.

        The key events name (``LockEvent.key``).
        """
        return self._resource.key

    @property
    def ttl(self) -> float:
        """The lease's time to live, in seconds."""
        return self._policy.ttl

    @property
    def lease(self) -> Lease | None:
        """The lease this object holds for the current task, or ``None``.

        When the current task holds none, the object's only lease if its task has
        finished and it is not held by an ``async with`` (as after
        ``await asyncio.create_task(lock.acquire())``). To release from another task
        a lease whose task still runs, hand that task the :class:`Lease` itself.
        """
        task = asyncio.current_task()
        own = None if task is None else self._leases.get(task)
        if own is not None:
            return own
        if len(self._leases) == 1:
            ((acquirer, lease),) = self._leases.items()
            # Only a lease whose task is done and that no ``async with`` holds: a
            # task sharing the object must never release a body's lease under it.
            if acquirer.done() and not lease.guarding:
                return lease
        return None

    @property
    def owned(self) -> bool:
        """Whether this object holds the lock: the lease of :attr:`lease` is live.

        A local check (no command is sent): not released, not lost, and its deadline
        on the client's clock has not passed. Use :meth:`locked` to ask Redis.
        """
        lease = self.lease
        return lease is not None and lease.owned

    @property
    def fencing_token(self) -> int:
        """The fencing token of this object's lease (see ``lease``), of its first name.

        Strictly increasing across successive holders of the name, and not
        consecutive: a token is never below the server clock in microseconds, so
        tokens keep increasing even after a restart or a failover sets the counter
        back. Pass it to storage that rejects writes carrying a token lower than the
        highest it has seen.

        :raises LockNotOwned: the lock is not held through this object
        """
        return self._current_lease().fencing_token

    async def locked(self) -> bool:
        """Ask the store whether the lock is held now (for a semaphore: no permit free)."""
        return await self._call(self._resource.locked(self._client), "inspection")

    async def _call(self, aw: Awaitable[_T], action: str) -> _T:
        """Await a read of the resource, mapping Redis errors to ``LockBackendError``."""
        try:
            return await aw
        except BACKEND_ERRORS as exc:
            raise LockBackendError(self._resource.description, action, exc) from exc

    def statistics(self) -> LockStatistics:
        """Return a snapshot of this lock object (see :class:`LockStatistics`).

        Call it from a coroutine (it looks up the current task's lease, as
        :attr:`lease` does).
        """
        lease = self.lease
        queue = queue_for(self._client, self._resource.channels)
        return LockStatistics(
            held=any(held.owned for held in self._leases.values()),
            waiting=0 if queue is None else queue.users,
            remaining=0.0 if lease is None else lease.remaining,
            extensions=0 if lease is None else lease.extensions,
            acquisitions=self._acquisitions,
            hand_overs=self._hand_overs,
        )

    async def acquire(
        self, blocking: bool | None = None, timeout: float | _Unset | None = _UNSET
    ) -> bool:
        """Acquire the lock for the current task; return whether it was acquired.

        :param blocking: wait for the lock if it is held (default: the constructor's)
        :param timeout: the longest wait in seconds, ``None`` for no limit (default:
            the constructor's); not allowed with ``blocking=False``
        :returns: ``True`` once Redis holds our token; ``False`` if the lock was held
            and we did not wait, the timeout passed, or the retry strategy gave up
        :raises LockError: the current task already holds the lock through this object
        :raises LockBackendError: Redis could not be reached or failed the command;
            whatever the attempt may have taken was released by token
        :raises asyncio.CancelledError: as usual; a cancelled acquire leaves nothing
            held, even if its command had already reached Redis
        """
        if blocking is None:
            blocking = self._blocking
        elif not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
        if isinstance(timeout, _Unset):
            wait_limit = self._timeout if blocking else None
        elif not blocking:
            raise ValueError("a timeout cannot be given with blocking=False")
        else:
            wait_limit = check_optional_seconds(timeout, "timeout")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("acquire() must be called from an asyncio task")
        return await self._acquire(task, blocking, wait_limit) is not None

    async def _acquire(
        self, task: asyncio.Task[Any], blocking: bool, wait_limit: float | None
    ) -> Lease | None:
        """Acquire for ``task``; return its lease, started, or ``None`` if not acquired."""
        leases = self._leases
        if leases:
            held = leases.get(task)
            if held is not None and not held.ended:
                raise LockError(f"lock {self._resource.description!r} is already held by this task")
            for acquirer, old in list(leases.items()):
                if old.ended and (acquirer is task or acquirer.done()):
                    del leases[acquirer]
        held_by_task = _held.get(task)
        if (
            held_by_task is not None
            and blocking
            and wait_limit is None
            and never_gives_up(self._retry)
        ):
            # Only a wait without end is refused: a try that does not wait, a wait with
            # a timeout or a retry limit, ends as for any held lock.
            self._refuse_self_deadlock(task, held_by_task)

        notifier = self._backend.notifications() if blocking else None
        acquisition = Acquisition(
            self._resource, self._client, self._policy, self._retry, notifier, blocking=blocking
        )
        asked = time.monotonic()
        if _events.listening("lock_requested"):
            _events.emit(self._event("lock_requested", acquisition.token))
        try:
            lease = await acquisition.run(wait_limit, task)
        except BaseException as exc:
            if _events.listening("lock_not_acquired"):
                outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
                error = None if outcome == "cancelled" else exc
                self._not_acquired(acquisition.token, asked, outcome, error)
            raise
        if lease is None:
            if _events.listening("lock_not_acquired"):
                self._not_acquired(acquisition.token, asked, "timeout" if blocking else "skipped")
            return None
        leases[task] = lease
        if self._blocks:
            if held_by_task is None:
                held_by_task = _held[task] = []
            else:
                _prune(held_by_task)  # a task looping acquire/release keeps one entry
            held_by_task.append((weakref.ref(lease), self._client, self._blocks))
        self._acquisitions += 1
        self._hand_overs += acquisition.handed_over
        lease.primitive, lease.template = self._primitive, self._template
        lease.start(time.monotonic() - asked, acquisition.handed_over)
        return lease

    def _event(self, event: str, token: str, **more: Any) -> _events.LockEvent:
        """Build an event about an acquire of this lock, by ``token``."""
        return _events.LockEvent(
            event=event,
            lock=self._resource.description,
            key=self._resource.key,
            token=token,
            at=_events.now(),
            primitive=self._primitive,
            template=self._template,
            **more,
        )

    def _not_acquired(
        self, token: str, asked: float, outcome: str, error: BaseException | None = None
    ) -> None:
        waited = time.monotonic() - asked
        _events.emit(self._event("lock_not_acquired", token, waited=waited, outcome=outcome,
                                 error=error))  # fmt: skip

    def _refuse_self_deadlock(self, task: asyncio.Task[Any], held: list[_Holding]) -> None:
        """Refuse a name ``task`` already holds through another lock object.

        Waiting for oneself without a timeout would never end, so it is refused at
        once. Holdings that ended are dropped on the way.
        """
        _prune(held)
        for lease_ref, client, names in held:
            lease = lease_ref()
            if (
                lease is not None
                and names & self._channel_set
                and _same_server(client, self._client)
            ):
                raise LockError(
                    f"lock {self._resource.description!r}: task {task.get_name()!r} already"
                    f" holds {lease.name!r} through another lock object, and would wait for"
                    " itself for ever (the lock is not reentrant; give a timeout to wait"
                    " anyway)"
                )

    def _current_lease(self) -> Lease:
        lease = self.lease
        if lease is None:
            raise LockNotOwned(self._resource.description, "not acquired by this task")
        return lease

    async def extend(self) -> None:
        """Reset the current task's lease to the full ``ttl``; see :meth:`Lease.extend`."""
        await self._current_lease().extend()

    async def release(self) -> None:
        """Release the current task's lease; see :meth:`Lease.release`."""
        lease = self._current_lease()
        for task, held in list(self._leases.items()):
            if held is lease:
                del self._leases[task]
        await lease.release()

    async def __aenter__(self) -> Lease:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("async with must run in an asyncio task")
        started = time.monotonic()
        lease = await self._acquire(task, self._blocking, self._timeout if self._blocking else None)
        if lease is None:
            raise LockNotAcquired(self._resource.description, time.monotonic() - started)
        lease.guard(task)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        lease = self._leases.pop(task, None)
        if lease is None:  # released by hand inside the body
            return
        await lease.exit_body(task, exc)


# What each task holds through exclusive locks of this process: the lease (weakly: a
# forgotten lease must still be collected), its client and its channels (which name
# its keys). Checked at every acquire, so that a task cannot wait for a name it holds
# itself through another lock object.
_Holding = tuple["weakref.ref[Lease]", Any, frozenset[str]]
_held: weakref.WeakKeyDictionary[asyncio.Task[Any], list[_Holding]] = weakref.WeakKeyDictionary()


def _prune(held: list[_Holding]) -> None:
    """Drop the holdings whose lease ended (or was collected)."""
    held[:] = [holding for holding in held if (lease := holding[0]()) and not lease.ended]


def _same_server(one: Any, other: Any) -> bool:
    """Whether two clients talk to the same server and database (as far as told)."""
    if one is other:
        return True
    first = getattr(getattr(one, "connection_pool", None), "connection_kwargs", None)
    second = getattr(getattr(other, "connection_pool", None), "connection_kwargs", None)
    if first is None or second is None:
        return False  # cluster clients: only the same client object counts
    return all(first.get(key) == second.get(key) for key in ("host", "port", "path", "db"))
