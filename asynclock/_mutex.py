"""``Mutex``: one holder at a time for one name, across every process."""

from __future__ import annotations

from typing import Any, Unpack

from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._validate import check_name, check_prefix


class Mutex(LeaseLock):
    """A distributed mutual-exclusion lock on one name.

    ::

        async with Mutex(client, "jobs:report", ttl=30.0) as lease:
            ...  # only one holder of "jobs:report" runs this at a time

    Entering waits for the lock (up to ``timeout`` seconds; ``LockNotAcquired`` after
    that, or at once with ``blocking=False``). While the body runs, a watchdog
    extends the lease every ``extend_interval``. If the lease is lost (the token is
    gone, or no extension succeeded before the lease ran out on the client's own
    clock, or ``max_hold`` passed), the body is cancelled and ``LockLost`` is raised
    from the ``async with`` statement. Leaving the body always releases, even when
    the body was cancelled, and the release runs to its end even if it is cancelled
    itself.

    Why the token lives on the lease a task owns, not on the lock object::

        task A acquires "x" (token a) ... A's lease expires, B acquires "x" (token b)
        if A and B shared one token slot, A's release would delete B's hold;
        here A's release sends token a, which no longer matches, and raises LockNotOwned.

    :param client: a ``redis.asyncio.Redis`` (standalone, Sentinel or
        ``redis.asyncio.RedisCluster``) client, or a :class:`~asynclock.Backend`
        (:func:`~asynclock.connect`); the lock never closes it
    :param name: the lock's name, a non-empty ``str``
    :param ttl: the lease's time to live in seconds; a crashed holder's lock frees
        itself after this long (at least 0.01)
    :param timeout: the longest ``async with`` / ``acquire()`` waits, in seconds;
        ``None`` waits as long as the retry strategy goes on
    :param blocking: ``False`` to try once and not wait
    :param auto_extend: extend the lease while it is held; without it the lease is
        lost when ``ttl`` runs out (call :meth:`extend` to push it back)
    :param extend_interval: seconds between extensions (default ``ttl / 3``; must be
        shorter than ``ttl``)
    :param max_hold: the longest the lock may be held in all, in seconds, extensions
        included; past it the lease counts as lost, so a wedged body cannot hold the
        lock forever
    :param retry: the pauses between a blocked acquire's tries, and when it gives up;
        while release notifications work, a release ends a pause at once (default:
        retry at every release and every 0.25 s; when polling,
        :class:`~asynclock.ExponentialBackoff` from 5 ms to 100 ms)
    :param on_lost: called (or awaited) with the ``LockLost`` error on loss
    :param hold_at_least: keep the lock until this many seconds after the acquire,
        even when the body finishes earlier (the release then shortens the TTL to what
        is left instead of deleting the key), so that a short scheduled job runs once
        per tick even when replicas' schedulers fire it at slightly different times
    :param replicas: how many replicas must acknowledge each acquire and extension
        (``WAIT``, on the same connection) before it counts: too few within
        ``replica_timeout`` and the acquire raises ``LockBackendError`` (after giving
        the lock back), an extension counts as failed; default 0, no waiting. It
        narrows what a failover can lose (README, *Replicas and failover*)
    :param replica_timeout: how long to wait for those replicas, in seconds (default
        1.0; shorter than ``extend_interval``)
    :param prefix: prepended to every key (default ``"asynclock:"``); keeps
        applications apart on a shared server; must not contain braces
    :raises TypeError: an argument has the wrong type (checked before any command)
    :raises ValueError: an argument is out of range (checked before any command)
    """

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        **options: Unpack[LockOptions],
    ) -> None:
        self._name = check_name(name)
        backend = backend_for(client)
        super().__init__(backend, backend.locks(check_prefix(prefix), (self._name,)), **options)

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name
