"""``MultiLock``: several names held together, all or none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX, NamedLocks, owner_key
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
    the slot of its hash tag: the whole name, or the ``{tag}`` it carries. So the
    names of one MultiLock on a cluster must share a tag, as in
    ``["{account:7}:debit", "{account:7}:credit"]``; otherwise the constructor raises
    ``ValueError`` (checked when the client is a ``RedisCluster``).

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
        _check_one_slot(client, checked_prefix, self._names)
        super().__init__(client, NamedLocks.of(checked_prefix, self._names), **options)

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


def _check_one_slot(client: object, prefix: str, names: tuple[str, ...]) -> None:
    keyslot = getattr(client, "keyslot", None)
    if keyslot is None or not hasattr(client, "get_node_from_key"):
        return  # not a cluster client: any names go
    slots = {keyslot(owner_key(prefix, name)) for name in names}
    if len(slots) > 1:
        raise ValueError(
            "on Redis Cluster the names of one MultiLock must share a hash tag, as in "
            f"'{{account:7}}:debit' and '{{account:7}}:credit'; these map to {len(slots)} "
            f"slots: {list(names)}"
        )
