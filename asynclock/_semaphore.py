"""``Semaphore``: at most ``limit`` holders of one name at a time, across every process.

Its keys and scripts on Redis are in ``_permits.py``.
"""

from __future__ import annotations

from typing import Any, Unpack

from ._errors import LimitMismatch
from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._validate import check_count, check_name, check_prefix

__all__ = ["LimitMismatch", "Semaphore"]


class Semaphore(LeaseLock):
    """A distributed counting semaphore: at most ``limit`` permits held at once.

    ::

        async with Semaphore(client, "api:quota", limit=5) as lease:
            ...  # at most 5 holders run this at once, across every process

    Everything but the counting is :class:`Mutex`'s lifecycle: waiting with a retry
    strategy, a watchdog extending the lease, loss (the body is cancelled and
    ``LockLost`` raised), cancellation safety, fencing tokens (strictly increasing per
    name with each acquisition). Each holder expires on its own after ``ttl``.

    :param client: a ``redis.asyncio`` client, or a :class:`~asynclock.Backend`
    :param name: the semaphore's name, a non-empty ``str``
    :param limit: how many permits exist, an ``int`` >= 1; every user of the name must
        agree (see :class:`LimitMismatch`)
    :param permits: how many permits one acquisition takes, all or none (default 1)

    The other parameters are :class:`Mutex`'s.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        limit: int,
        permits: int = 1,
        prefix: str = DEFAULT_PREFIX,
        **options: Unpack[LockOptions],
    ) -> None:
        self._name = check_name(name)
        checked_limit = check_count(limit, "limit")
        checked_permits = check_count(permits, "permits")
        if checked_permits > checked_limit:
            raise ValueError(f"permits ({permits}) must not exceed limit ({limit})")
        self._limit, self._permit_count = checked_limit, checked_permits
        backend = backend_for(client)
        self._permits = backend.semaphore(
            check_prefix(prefix), self._name, checked_limit, checked_permits
        )
        super().__init__(backend, self._permits, **options)

    @property
    def name(self) -> str:
        """The semaphore's name."""
        return self._name

    @property
    def limit(self) -> int:
        """How many permits exist."""
        return self._limit

    @property
    def permits(self) -> int:
        """How many permits one acquisition takes."""
        return self._permit_count

    async def holders(self) -> int:
        """Ask the store how many live holders the semaphore has now."""
        holders, _, _ = await self._inspect()
        return holders

    async def in_use(self) -> int:
        """Ask the store how many permits live holders hold now."""
        _, in_use, _ = await self._inspect()
        return in_use

    async def _inspect(self) -> tuple[int, int, int]:
        return await self._call(self._permits.inspect(self._client), "inspection")
