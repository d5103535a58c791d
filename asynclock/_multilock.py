"""``MultiLock``: several names held together, all or none.

On one server, or names of one Redis Cluster slot, one script takes every name.
Names spread over several slots are taken one slot at a time (``_slots.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._validate import check_names, check_prefix


class MultiLock(LeaseLock):
    """An exclusive lock over several names at once: all of them, or none.

    ::

        async with MultiLock(client, ["account:1", "account:2"]) as lease:
            ...  # both names held; lease.fencing_tokens has one token per name

    One script takes every name at once or none of them, so a holder never holds a
    strict subset, not even for a moment visible to others: two MultiLocks over
    overlapping names cannot deadlock, whatever order their names were given in.
    It shares its keys with :class:`Mutex`, so ``MultiLock(["a", "b"])`` and
    ``Mutex("a")`` exclude each other. The rest is ``Mutex``'s lifecycle.

    **Redis Cluster.** A script may only touch keys of one slot. A name's keys live in
    the slot of its hash tag: the whole name, or the ``{tag}`` it carries. Names that
    share a tag, as in ``["{account:7}:debit", "{account:7}:credit"]``, are taken by
    one script, as on one server. Names in several slots are taken one slot's group at
    a time, in one order for every lock (by slot, then name); a group refused makes
    the groups already taken go back (without a trace, so the next try takes them
    again) before the lock waits and tries again. No lock holds some names while it
    waits for others, so none deadlock, and ``acquire`` reports success only with every
    name held. What differs from one slot: another lock may see an earlier group held
    for the moment before a later one is refused, and a release frees the groups one
    after another, without handing them straight to a waiter of the process.

    :param client: a ``redis.asyncio`` client
    :param names: the names, a non-empty list or tuple of distinct non-empty ``str``

    The other parameters are :class:`Mutex`'s.
    """

    def __init__(
        self,
        client: Any,
        names: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        **options: Unpack[LockOptions],
    ) -> None:
        self._names = check_names(names)
        checked_prefix = check_prefix(prefix)
        backend = backend_for(client)
        super().__init__(backend, backend.locks(checked_prefix, self._names), **options)

    @property
    def names(self) -> tuple[str, ...]:
        """The names, in the order given."""
        return self._names

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """The fencing token of each name for this object's lease (see ``lease``).

        :raises LockNotOwned: the lock is not held through this object
        """
        return dict(self._current_lease().fencing_tokens)
