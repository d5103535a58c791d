"""The keys and scripts of a semaphore on Redis: the resource behind ``Semaphore``.

Keys, all with the name's hash tag (one Redis Cluster slot), apart from the keys of
locks of the same name:

- ``<prefix>semaphore:{<name>}:holders``: a sorted set of holder tokens scored by
  their expiry in milliseconds on the server's clock; each holder expires on its
  own, purged by the next acquire, so a crashed holder gives its permits back after
  its TTL without touching the others;
- ``...:permits``: a hash of holder token to ``"<permits>:<fence>"``;
- ``...:limit``: the limit in force while anyone holds the semaphore;
- ``...:fence``: the fence counter (it expires after a day without an acquire);
- ``...:releases``: the tombstone, the tokens most recently released (see
  ``remember_release`` in ``scripts/common.lua``).

Expiry is computed from the server's clock inside the scripts, never from a client's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _scripts
from ._errors import LimitMismatch
from ._names import RELEASE_TOMBSTONE_MS, base_key
from ._resource import Grant, Place
from ._shapes import SemaphoreShape


@dataclass(frozen=True, slots=True)
class SemaphorePermits(SemaphoreShape):
    """The :class:`~asynclock._resource.Resource` of ``permits`` of a semaphore."""

    prefix: str
    name: str
    limit: int
    permits: int
    keys: tuple[str, str, str, str, str] = field(init=False)
    #: The sorted set of holders, whose channel releases are published on.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        base = base_key(self.prefix, "semaphore", self.name)
        keys = (
            f"{base}:holders",
            f"{base}:permits",
            f"{base}:limit",
            f"{base}:fence",
            f"{base}:releases",
        )
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "key", keys[0])

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take the permits for ``token`` if enough are free.

        A semaphore keeps no line of waiters: a release wakes every waiting process,
        since the permit may suit any of them (``waiter`` and ``place`` are ignored).
        """
        reply = await _scripts.SEMAPHORE_ACQUIRE(
            client, self.keys, (token, ttl_ms, self.limit, self.permits)
        )
        status, value = int(reply[0]), int(reply[1])
        if status == 1:
            return Grant(True, (value,))
        if status == -1:
            raise LimitMismatch(self.name, self.limit, value)
        return Grant(False, (), retry_after=value / 1000 if value > 0 else None)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it is still live; never revive it."""
        return int(await _scripts.SEMAPHORE_EXTEND(client, self.keys[:3], (token, ttl_ms))) == 1

    async def release(self, client: Any, token: str) -> bool:
        """Give the permits back; report whether the holder was still live."""
        keys = (self.keys[0], self.keys[1], self.keys[4])  # holders, permits, tombstone
        reply = await _scripts.SEMAPHORE_RELEASE(client, keys, (token, RELEASE_TOMBSTONE_MS))
        return int(reply) == 1

    async def inspect(self, client: Any) -> tuple[int, int, int]:
        """Return live holders, permits in use, and the limit in force (-1: none)."""
        reply = await _scripts.SEMAPHORE_INSPECT(client, self.keys[:3], ())
        return int(reply[0]), int(reply[1]), int(reply[2])
