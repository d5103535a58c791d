"""What a resource says of itself, the same on every store: its shape.

A resource is a primitive's data on one store and the operations on it (see
``_resource.py``). What it tells the lifecycle about itself (its names, channels,
whether it excludes and hands over, what a hand-over of a shared lock does) depends
on the primitive only, so each shape is written once here and every store's resource
of that primitive takes it: Redis's (``_names.py``, ``_permits.py``, ``_sides.py``),
memory's and PostgreSQL's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from ._resource import HandOver, Successor

#: Which side of a read-write lock: ``"r"`` reads (shared), ``"w"`` writes (alone).
Mode = Literal["r", "w"]


class ExclusiveNames:
    """An exclusive lock over names (``Mutex``, ``MultiLock``): one channel per name,
    its ``owner_keys``, and a release that can hand every name over in one step."""

    __slots__ = ()

    names: tuple[str, ...]
    owner_keys: tuple[str, ...]

    @property
    def description(self) -> str:
        """The names, for messages."""
        return ", ".join(self.names)

    @property
    def key(self) -> str:
        """The first name's key."""
        return self.owner_keys[0]

    @property
    def channels(self) -> tuple[str, ...]:
        """Where releases wake waiters: one channel per name, named like its key."""
        return self.owner_keys

    @property
    def exclusive(self) -> bool:
        """Always: a holder of a name excludes everyone else."""
        return True

    @property
    def blocks(self) -> tuple[str, ...]:
        """Every waiter of these names."""
        return self.owner_keys

    @property
    def hands_over(self) -> bool:
        """Always: one call releases and grants every name."""
        return True


class Shared(ABC):
    """A lock others may hold beside the holder: a release wakes every waiter, who
    tries, rather than handing over to one."""

    __slots__ = ()

    @abstractmethod
    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds (each store's resource defines it)."""

    @property
    def hands_over(self) -> bool:
        """Never: the waiters are woken, and try."""
        return False

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release: the waiters are woken, and try."""
        return HandOver(await self.release(client, token), None)


class SemaphoreShape(Shared):
    """``permits`` of the semaphore ``name`` of ``limit``: one channel, its ``key``."""

    __slots__ = ()

    name: str
    limit: int
    permits: int
    #: The semaphore's main key (a field, or a property of the resource).
    key: str

    @property
    def names(self) -> tuple[str, ...]:
        """The semaphore's name, alone."""
        return (self.name,)

    @property
    def description(self) -> str:
        """The semaphore's name, for messages."""
        return self.name

    @property
    def channels(self) -> tuple[str, ...]:
        """Where releases wake waiters: named like the semaphore's key."""
        return (self.key,)

    @property
    def exclusive(self) -> bool:
        """Only with room for a single acquisition: another may hold the rest."""
        return self.permits * 2 > self.limit

    @property
    def blocks(self) -> tuple[str, ...]:
        """Every waiter, when one holding leaves no room for another; else none for
        sure (the others may come and go)."""
        return self.channels if self.exclusive else ()

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Nothing to do: a semaphore keeps no line of waiters."""

    @abstractmethod
    async def inspect(self, client: Any) -> tuple[int, int, int]:
        """Live holders, permits in use, the limit in force (each store's resource
        defines it)."""

    async def locked(self, client: Any) -> bool:
        """Whether too few permits are free for this acquirer."""
        _, in_use, _ = await self.inspect(client)
        return in_use + self.permits > self.limit


class SideShape(Shared):
    """One side of the read-write lock ``name``, whose keys start with ``base``."""

    __slots__ = ()

    name: str
    base: str
    mode: Mode

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
        """The writer's key, or the readers'."""
        return f"{self.base}:writer" if self.mode == "w" else f"{self.base}:readers"

    @property
    def channels(self) -> tuple[str, ...]:
        """Where this side's waiters are woken: the readers' or the writers' channel."""
        return (f"{self.base}:read",) if self.mode == "r" else (f"{self.base}:write",)

    @property
    def exclusive(self) -> bool:
        """A writer excludes everyone; a reader, no other reader."""
        return self.mode == "w"

    @property
    def blocks(self) -> tuple[str, ...]:
        """A writer keeps out readers and writers; a reader, writers."""
        both = (f"{self.base}:read", f"{self.base}:write")
        return both if self.mode == "w" else both[1:]

    @abstractmethod
    async def inspect(self, client: Any) -> tuple[bool, int, int]:
        """Whether a writer holds, live readers, writers waiting (each store's
        resource defines it)."""

    async def locked(self, client: Any) -> bool:
        """Whether this side would have to wait: a writer holds (or, for a writer,
        anyone holds); a reader may still wait for a writer ahead of it in line."""
        writer, readers, _ = await self.inspect(client)
        return writer or (self.mode == "w" and readers > 0)
