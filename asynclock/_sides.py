"""The keys and scripts of a read-write lock on Redis: the resources behind its sides.

Keys, all with the name's hash tag (one Redis Cluster slot), apart from the keys of
locks and semaphores of the same name:

- ``<prefix>rwlock:{<name>}:writer``: the writing holder's token, with a PX expiry;
- ``...:readers``: a sorted set of reading holders' tokens scored by their expiry in
  milliseconds on the server's clock (each reader expires on its own, so a crashed
  reader frees its share after its TTL without touching the others), and
  ``...:reader-fences``, each reader's fencing token;
- ``...:line`` and ``...:line-alive``: the processes waiting to read (``r:<id>``) or
  to write (``w:<id>``), by arrival and by when their place lapses unless renewed;
- ``...:fence``: the fence counter, the last writer's fencing token;
- ``...:releases``: the tombstone, the tokens most recently released.

Who may enter is one rule (``rw_acquire.lua``): nobody ahead of the caller may be in
its way. A reader enters unless a writer holds or waits ahead of it; a writer enters
unless anyone holds or waits ahead of it. Releases wake the waiters on the readers'
and the writers' channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _scripts
from ._names import PLACE_MS, RELEASE_TOMBSTONE_MS, base_key
from ._resource import Grant, Place
from ._shapes import Mode, SideShape


@dataclass(frozen=True, slots=True)
class ReadWriteSide(SideShape):
    """The :class:`~asynclock._resource.Resource` of one side (read or write) of a
    read-write lock."""

    prefix: str
    name: str
    mode: Mode
    #: What every key of the lock starts with.
    base: str = field(init=False)
    #: writer, readers, reader fences, line, line-alive, fence, tombstone, and the
    #: readers' and writers' channels.
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        base = base_key(self.prefix, "rwlock", self.name)
        parts = ("writer", "readers", "reader-fences", "line", "line-alive", "fence")
        keys = (*(f"{base}:{part}" for part in parts), f"{base}:releases")
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "keys", (*keys, f"{base}:read", f"{base}:write"))

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take this side for ``token`` if nobody ahead is in the way (see the module)."""
        args = (token, ttl_ms, self.mode, waiter, place, PLACE_MS)
        reply = await _scripts.RW_ACQUIRE(client, self.keys[:7], args)
        if int(reply[0]) == 1:
            return Grant(True, (int(reply[1]),))
        wait_ms = int(reply[1])
        return Grant(False, (), retry_after=wait_ms / 1000 if wait_ms > 0 else None)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the holder's expiry if it still holds; never revive it."""
        reply = await _scripts.RW_EXTEND(client, self.keys[:3], (token, ttl_ms, self.mode))
        return int(reply) == 1

    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds; report whether it still held it."""
        keys = (*self.keys[:5], self.keys[6], self.keys[7], self.keys[8])
        reply = await _scripts.RW_RELEASE(client, keys, (token, RELEASE_TOMBSTONE_MS, self.mode))
        return int(reply) == 1

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up the process's place in line, waking the others."""
        keys = (self.keys[3], self.keys[4], self.keys[7], self.keys[8])
        await _scripts.RW_LEAVE(client, keys, (f"{self.mode}:{waiter}",))

    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Return whether a writer holds, the live readers, and the writers waiting."""
        reply = await _scripts.RW_INSPECT(client, self.keys[:5], ())
        return bool(int(reply[0])), int(reply[1]), int(reply[2])
