"""``MultiLock``: several names held together, all or none.

On one server, or names of one Redis Cluster slot, one script takes every name.
Names spread over several slots are taken one slot at a time by :class:`SlotGroups`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

from . import _scripts
from ._lock import LeaseLock, LockOptions
from ._names import DEFAULT_PREFIX, NamedLocks, owner_key
from ._resource import Grant, HandOver, Place, Resource, Successor
from ._validate import check_names, check_prefix

_log = logging.getLogger("asynclock")


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
        super().__init__(client, _resource(client, checked_prefix, self._names), **options)

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


def _resource(client: Any, prefix: str, names: tuple[str, ...]) -> Resource:
    """The names' locks: one script's, or one per cluster slot when they span several."""
    if not _scripts.is_cluster(client) or len(names) == 1:
        return NamedLocks.of(prefix, names)
    slots: dict[int, list[str]] = {}
    for name in names:
        slots.setdefault(client.keyslot(owner_key(prefix, name)), []).append(name)
    if len(slots) == 1:
        return NamedLocks.of(prefix, names)
    return SlotGroups.of(prefix, tuple(tuple(sorted(slots[slot])) for slot in sorted(slots)))


@dataclass(frozen=True, slots=True)
class SlotGroups:
    """The :class:`~asynclock._resource.Resource` of names spread over cluster slots.

    One :class:`~asynclock._names.NamedLocks` per slot, taken in their order (every
    lock orders its groups alike: by slot, then name). The lease is everyone's: one
    token, its fencing tokens in the order of :attr:`names`.
    """

    groups: tuple[NamedLocks, ...]

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(prefix: str, groups: tuple[tuple[str, ...], ...]) -> SlotGroups:
        """The groups of names (each of one slot, in order) with ``prefix``."""
        return SlotGroups(tuple(NamedLocks.of(prefix, names) for names in groups))

    @property
    def names(self) -> tuple[str, ...]:
        """Every name, group after group: the order of the fencing tokens."""
        return tuple(name for group in self.groups for name in group.names)

    @property
    def description(self) -> str:
        """The names, for messages."""
        return ", ".join(self.names)

    @property
    def key(self) -> str:
        """The owner key of the first name."""
        return self.groups[0].key

    @property
    def channels(self) -> tuple[str, ...]:
        """Where releases are published: every name's own channel."""
        return tuple(channel for group in self.groups for channel in group.channels)

    @property
    def hands_over(self) -> bool:
        """Never: groups on several shards cannot change hands in one step."""
        return False

    @property
    def exclusive(self) -> bool:
        """Always: a holder of a name excludes everyone else."""
        return True

    @property
    def blocks(self) -> tuple[str, ...]:
        """Every waiter of these names."""
        return self.channels

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take every group in order; at a refusal, give back the groups taken."""
        fences: list[int] = []
        for taken, group in enumerate(self.groups):
            try:
                grant = await group.acquire(client, token, ttl_ms, waiter, place)
            except Exception:
                # A try that failed (a node failing over, which a waiter rides out)
                # holds nothing while it waits either; this group too, in case its
                # command ran and only the reply was lost. The failure is what tells.
                await self._give_back(client, token, self.groups[: taken + 1])
                raise
            if not grant.acquired:
                # No hold-and-wait. Given back without a tombstone: the next try,
                # with the same token, must be able to take them again.
                await self._give_back(client, token, self.groups[:taken])
                return grant
            fences += grant.fencing_tokens
        return Grant(True, tuple(fences))

    @staticmethod
    async def _give_back(client: Any, token: str, groups: tuple[NamedLocks, ...]) -> None:
        outcomes = await asyncio.gather(
            *(group.give_back(client, token) for group in groups), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                # Held until its TTL, or until the acquire's clean-up releases it.
                _log.debug("could not give back a slot group: %r", outcome)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Extend every group; the lease holds only if ``token`` still holds them all."""
        extended = await asyncio.gather(*(g.extend(client, token, ttl_ms) for g in self.groups))
        return all(extended)

    async def release(self, client: Any, token: str) -> bool:
        """Release every group; report whether ``token`` held them all."""
        released = await asyncio.gather(*(g.release(client, token) for g in self.groups))
        return all(released)

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release: groups on several shards cannot change hands in one step."""
        return HandOver(await self.release(client, token), None)

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up ``waiter``'s place in the line of every name."""
        await asyncio.gather(*(group.leave_line(client, waiter) for group in self.groups))

    async def locked(self, client: Any) -> bool:
        """Report whether any of the names is held by anyone."""
        return any(await asyncio.gather(*(group.locked(client) for group in self.groups)))
