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
- ``...:released``: the tombstone, the tokens most recently released.

Who may enter is one rule (``rw_acquire.lua``): nobody ahead of the caller may be in
its way. A reader enters unless a writer holds or waits ahead of it; a writer enters
unless anyone holds or waits ahead of it. Releases wake the waiters on the readers'
and the writers' channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import _scripts
from ._names import PLACE_MS, RELEASE_TOMBSTONE_MS, base_key
from ._resource import Grant, HandOver, Place, Successor

#: Which side of a read-write lock: ``"r"`` reads (shared), ``"w"`` writes (alone).
Mode = Literal["r", "w"]


@dataclass(frozen=True, slots=True)
class ReadWriteSide:
    """The :class:`~asynclock._resource.Resource` of one side (read or write) of a
    read-write lock."""

    prefix: str
    name: str
    mode: Mode
    #: writer, readers, reader fences, line, line-alive, fence, tombstone, and the
    #: readers' and writers' channels.
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        base = base_key(self.prefix, "rwlock", self.name)
        parts = ("writer", "readers", "reader-fences", "line", "line-alive", "fence")
        keys = (*(f"{base}:{part}" for part in parts), f"{base}:released")
        object.__setattr__(self, "keys", (*keys, f"{base}:read", f"{base}:write"))

    @property
    def names(self) -> tuple[str, ...]:
        """The lock's name, alone."""
        return (self.name,)

    @property
    def description(self) -> str:
        """The lock's name, for messages."""
        return self.name

    @property
    def key(self) -> str:
        """The writer key, or the readers' sorted set."""
        return self.keys[0] if self.mode == "w" else self.keys[1]

    @property
    def channels(self) -> tuple[str, ...]:
        """Where this side's waiters are woken: the readers' or the writers' channel."""
        return (self.keys[7],) if self.mode == "r" else (self.keys[8],)

    @property
    def exclusive(self) -> bool:
        """A writer excludes everyone; a reader, no other reader."""
        return self.mode == "w"

    @property
    def blocks(self) -> tuple[str, ...]:
        """A writer keeps out readers and writers; a reader, writers."""
        return (self.keys[7], self.keys[8]) if self.mode == "w" else (self.keys[8],)

    @property
    def hands_over(self) -> bool:
        """Never: a release wakes the waiters, who try."""
        return False

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

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release: the waiters are woken, and try."""
        return HandOver(await self.release(client, token), None)

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up the process's place in line, waking the others."""
        keys = (self.keys[3], self.keys[4], self.keys[7], self.keys[8])
        await _scripts.RW_LEAVE(client, keys, (f"{self.mode}:{waiter}",))

    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Return whether a writer holds, the live readers, and the writers waiting."""
        reply = await _scripts.RW_INSPECT(client, self.keys[:5], ())
        return bool(int(reply[0])), int(reply[1]), int(reply[2])

    async def locked(self, client: Any) -> bool:
        """Whether this side would have to wait: a writer holds (or, for a writer,
        anyone holds); a reader may still wait for a writer ahead of it in line."""
        writer, readers, _ = await self.inspect(client)
        return writer or (self.mode == "w" and readers > 0)
