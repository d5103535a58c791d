"""What a primitive contributes to the lease lifecycle: a :class:`Resource`.

A resource is the keys and scripts of one primitive (``NamedLocks`` behind ``Mutex``
and ``MultiLock``, ``SemaphorePermits`` behind ``Semaphore``). Every method is one
atomic script call (or one read) keyed by the caller's token, so the lifecycle can
retry, extend and clean up without knowing the data layout. The value types here are
what crosses that boundary; the helpers at the end are the token-keyed calls that
every part of the lifecycle shares, with their errors mapped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol

from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._aio import within
from ._errors import LockBackendError

_log = logging.getLogger("asynclock")


class BackendFailure(Exception):
    """A store other than Redis failed (its driver's error is the ``__cause__``).

    :ivar transient: whether it may pass by itself (the store restarting, a connection
        lost), so that an extension or a release is worth sending again
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


#: What a failing store call raises: redis-py's errors (a cluster client's routing
#: errors are not RedisError), the OS's socket errors, and other stores' failures.
BACKEND_ERRORS: Final = (RedisError, RedisClusterException, OSError, BackendFailure)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass by itself: what a failover or a restart raises.

    A connection refused, cut or timed out; a cluster without a node for the slot yet
    (and a cluster client that could reach no node), or a slot in migration; a
    demoted primary refusing writes. Not a refused password, a missing permission, a
    bad reply, or too few replicas acknowledging (a deployment's settings).
    """
    if isinstance(error, BackendFailure):
        return error.transient
    if isinstance(error, AuthenticationError):
        return False
    transient = (
        RedisConnectionError,
        RedisTimeoutError,
        ClusterDownError,
        ClusterError,  # too many redirections, in a migration
        AskError,  # MOVED and ASK: a slot moved, or moving (a replicated call's own)
        TryAgainError,
        ReadOnlyError,
        ConnectionError,  # the OS's: refused, reset
        RedisClusterException,  # "Redis Cluster cannot be connected"
    )
    return isinstance(error, transient)


def retries_commands(client: Any) -> bool:
    """Whether ``client`` may retry a failed command: not if its retry policy, given
    explicitly, retries nothing (``Retry(NoBackoff(), 0)``): it wants errors now.
    """
    retry = getattr(client, "retry", None)  # cluster clients
    if retry is None and hasattr(client, "get_retry"):
        retry = client.get_retry()
    if retry is None:
        return True  # the library's default
    count = retry.get_retries() if hasattr(retry, "get_retries") else getattr(retry, "_retries", 1)
    return bool(count)


class Place(StrEnum):
    """What a successful acquire does with its process's place in the lock's line.

    The values are what the scripts receive (``ARGV``), see ``scripts/common.lua``.
    """

    #: Nothing: the process does not stand in line.
    NONE = ""
    #: Give the place up: nobody else of the process waits for this lock.
    LEAVE = "leave"
    #: Move it to the back: more coroutines of the process wait, the others go first.
    BACK = "back"


class Grant(NamedTuple):
    """The answer of one acquire attempt (a named tuple: one is made at every try).

    :ivar acquired: whether the caller now holds the lease
    :ivar fencing_tokens: one fencing token per name, when acquired
    :ivar retry_after: when not acquired, seconds until the holder's lease runs out,
        if known; a waiter never sleeps longer than this
    """

    acquired: bool
    fencing_tokens: tuple[int, ...]
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Successor:
    """The waiter of this process a release may hand the lock to, and on what terms.

    :ivar token: the waiter's token, which holds the lock after a hand-over
    :ivar ttl_ms: the waiter's lease time to live, in milliseconds
    :ivar waiter: the process's id in the lock's line
    :ivar place: what the hand-over does with the process's place in line
    :ivar jump_line: hand over even when another process is first in line (a short
        run of hand-overs inside one process, bounded by the caller)
    """

    token: str
    ttl_ms: int
    waiter: str = ""
    place: Place = Place.NONE
    jump_line: bool = False


@dataclass(frozen=True, slots=True)
class HandOver:
    """The answer of a release that may hand over: released, and the successor's grant.

    :ivar released: whether the caller's token still held everything it released
    :ivar fencing_tokens: the successor's fencing tokens if it got the lock, else ``None``
    """

    released: bool
    fencing_tokens: tuple[int, ...] | None


class Resource(Protocol):
    """The keys and scripts of one primitive: all it adds to the shared lifecycle."""

    @property
    def names(self) -> tuple[str, ...]:
        """The name(s) of the lock, one fencing token each."""
        ...

    @property
    def description(self) -> str:
        """The lock's name(s), for messages."""
        ...

    @property
    def key(self) -> str:
        """The lock's main Redis key, for events."""
        ...

    @property
    def channels(self) -> tuple[str, ...]:
        """The pub/sub channels its releases are published on."""
        ...

    @property
    def exclusive(self) -> bool:
        """Whether one holder excludes every other (so the next waiter need not try)."""
        ...

    @property
    def blocks(self) -> tuple[str, ...]:
        """The channels of the waiters a holding keeps out: a task that holds it and
        waits on one of them without end would wait for itself (refused at once)."""
        ...

    @property
    def hands_over(self) -> bool:
        """Whether :meth:`hand_over` can give the lock straight to a successor."""
        ...

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Try once to take the lease for ``token`` with a ``ttl_ms`` expiry.

        ``waiter`` is the id of the waiting process (its notifier), or ``""``; a
        resource that keeps a line of waiting processes (to wake only the first at a
        release) puts it in line when refused, and on success does what ``place``
        says. A resource without a line ignores both.
        """
        ...

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up ``waiter``'s place in line (nothing, for a resource without one)."""
        ...

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the expiry to ``ttl_ms`` if ``token`` still holds; never re-create."""
        ...

    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds; report whether it held all of it."""
        ...

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release, or give the lock straight to ``to`` (a waiter of this process).

        A resource that cannot hand over releases, and says so with no fencing tokens.
        """
        ...

    async def locked(self, client: Any) -> bool:
        """Report whether anyone holds the lock (for a semaphore: too few permits free)."""
        ...


async def release_by_token(
    resource: Resource, client: Any, token: str, timeout: float, *, resend: bool = True
) -> bool:
    """Delete whatever ``token`` holds, within ``timeout`` seconds; map failures.

    The token is unique, so releasing by it is safe whatever happened to it: held,
    expired, already released, or never acquired (the release's tombstone then
    refuses an acquire with this token that reaches the server later). So is sending
    it again: a transient error (a connection lost in a failover or a migration) is
    retried within ``timeout`` (unless ``resend`` is false, or the client was given a
    policy of no retries).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await within(resource.release(client, token), deadline - time.monotonic())
        except (TimeoutError, *BACKEND_ERRORS) as exc:
            left = deadline - time.monotonic()
            again = resend and is_transient(exc) and retries_commands(client)
            if not (again and left > _RELEASE_RETRY):
                raise LockBackendError(resource.description, "release", exc) from exc
        await asyncio.sleep(_RELEASE_RETRY)


# The pause before a release is sent again after a transient error.
_RELEASE_RETRY: Final = 0.05


async def shorten_by_token(
    resource: Resource, client: Any, token: str, ttl_ms: int, timeout: float
) -> bool:
    """Set what ``token`` holds to expire in ``ttl_ms``, within ``timeout`` seconds.

    A release with ``hold_at_least``: the key stays until then, then frees itself.
    """
    try:
        return await within(resource.extend(client, token, ttl_ms), timeout)
    except (TimeoutError, *BACKEND_ERRORS) as exc:
        raise LockBackendError(resource.description, "release", exc) from exc


async def clean_up(resource: Resource, client: Any, token: str, timeout: float) -> None:
    """Best-effort release by token, after an acquire of unknown outcome or a loss."""
    try:
        # Once: the caller waits for its error or cancellation to surface, and what
        # stays held frees itself within its TTL.
        await release_by_token(resource, client, token, timeout, resend=False)
    except LockBackendError as exc:
        _log.warning(
            "could not clean up lock %r; it expires on its own within its TTL: %s",
            resource.description,
            exc,
        )
