"""``ReadWriteLock``: many readers or one writer, on one name, across every process.

Who may enter is one rule: nobody ahead of the caller may be in its way. A reader
enters unless a writer holds or waits ahead of it; a writer enters unless anyone holds
or waits ahead of it. Its keys and scripts on Redis are in ``_sides.py``.
"""

from __future__ import annotations

from typing import Any, Unpack

from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._validate import check_name, check_prefix


class ReadLock(LeaseLock):
    """The read side of a :class:`ReadWriteLock`: shared with other readers.

    Made by :meth:`ReadWriteLock.read`. Its lease's ``fencing_token`` is the last
    writer's: what the reader can observe. The surface is :class:`Mutex`'s.
    """

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._resource.names[0]


class WriteLock(LeaseLock):
    """The write side of a :class:`ReadWriteLock`: alone, no reader and no other writer.

    Made by :meth:`ReadWriteLock.write`. Its lease's ``fencing_token`` is new for every
    write, higher than any before on the name. The surface is :class:`Mutex`'s.
    """

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._resource.names[0]


class ReadWriteLock:
    """Many readers or one writer on ``name``, across every process.

    ::

        rw = ReadWriteLock(client, "catalog", ttl=30.0)
        async with rw.read():    # shared with other readers
            ...
        async with rw.write():   # alone: no reader, no other writer
            ...

    :meth:`read` and :meth:`write` return lock objects with :class:`Mutex`'s surface and
    lifecycle: ``acquire``, ``release``, ``extend``, ``owned``, ``fencing_token``,
    ``timeout``, ``blocking``, a watchdog, loss (the body cancelled and ``LockLost``
    raised), events, cancellation safety.

    - **Write-preferring, without starving readers**: a waiting writer keeps out the
      readers that come after it; readers that were waiting before it go first. A
      waiter waits only for the holders and for those ahead of it in line.
    - Each reader holds its own lease, expiring alone on the server's clock: a crashed
      reader frees its share after its TTL without touching the others.
    - **Fencing**: every write gets a new token, higher than any before; a read gets
      the last write's token, so storage can refuse a write from an older writer and
      a reader can tell which version it read.
    - No upgrade: a task holding the read side that asks for the write side waits for
      itself (until its timeout).

    :param client: a ``redis.asyncio`` client (standalone, Sentinel or Cluster), or a
        :class:`~asynclock.Backend`
    :param name: the lock's name, a non-empty ``str``

    The other parameters are :class:`Mutex`'s, for both sides.
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
        prefix = check_prefix(prefix)
        backend = backend_for(client)
        self._sides = backend.read_write(prefix, self._name, "w")
        self._read = ReadLock(backend, backend.read_write(prefix, self._name, "r"), **options)
        self._write = WriteLock(backend, self._sides, **options)

    def __repr__(self) -> str:
        return f"<ReadWriteLock {self._name!r}>"

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    def read(self) -> ReadLock:
        """The read side: shared with other readers (one object, for every task)."""
        return self._read

    def write(self) -> WriteLock:
        """The write side: alone (one object, for every task)."""
        return self._write

    async def readers(self) -> int:
        """Ask the store how many live readers hold the lock now."""
        _, readers, _ = await self._inspect()
        return readers

    async def writing(self) -> bool:
        """Ask the store whether a writer holds the lock now."""
        writer, _, _ = await self._inspect()
        return writer

    async def writers_waiting(self) -> int:
        """Ask the store how many processes wait to write (on Redis: their places not lapsed)."""
        _, _, writers = await self._inspect()
        return writers

    async def _inspect(self) -> tuple[bool, int, int]:
        return await self._write._call(self._sides.inspect(self._write._client), "inspection")
