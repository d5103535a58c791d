"""Names spread over Redis Cluster slots: one group per slot, taken in one order.

A script may only touch keys of one slot, so a ``MultiLock`` whose names hash to
several slots takes them one slot's group at a time (see ``MultiLock``'s docstring
for what that changes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from . import _scripts
from ._names import NamedLocks, owner_key
from ._resource import Grant, HandOver, Place, Resource, Successor

_log = logging.getLogger("asynclock")


def resource_for_names(client: Any, prefix: str, names: tuple[str, ...]) -> Resource:
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
