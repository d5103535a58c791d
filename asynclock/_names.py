"""Exclusive locks over one or more names: the keys and scripts behind ``Mutex``.

Each name has keys that share its hash tag, and so one Redis Cluster slot (see
:func:`base_key` for names that carry a tag of their own):

- ``<prefix>lock:{<name>}``: the owner key, holding the holder's token, expiring
  after the lease's TTL (``PX``);
- ``<prefix>fence:{<name>}``: the fence counter, bumped by every acquire of the name,
  which makes fencing tokens strictly increasing per name; it expires after a day
  without an acquire (see ``next_fence`` in ``scripts/common.lua``);
- ``<prefix>line:{<name>}`` and ``<prefix>line-alive:{<name>}``: the processes
  waiting for the name, by arrival and by when their place lapses. A release wakes
  the first of them only; the line never decides who may take the lock (see
  ``scripts/acquire.lua``), and it goes away when nobody waits;
- ``<prefix>releases:{<name>}``: the tombstone, a list of the tokens most recently
  released, gone 30 s after the latest release (see ``remember_release`` in
  ``scripts/common.lua``).

A lock over several names is all-or-nothing in one script call (nothing is held
partially, not even for a moment); a ``Mutex`` is the one-name case, so the two
exclude each other on a shared name.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from . import _scripts
from ._resource import Grant, HandOver, Place, Successor
from ._shapes import ExclusiveNames

#: The prefix of every key asynclock writes, unless another is given.
DEFAULT_PREFIX = "asynclock:"

#: How long a release is remembered, so that the same release resent by the client
#: library (after a lost reply) still counts as released. Covers redis-py's retries.
RELEASE_TOMBSTONE_MS = 30_000

#: How long a waiting process's place in a line lasts unless renewed. A waiter renews
#: it with every refused try, at least every fallback re-check (a quarter second), so
#: only a process that crashed or froze loses it.
PLACE_MS = 2_000


def has_hash_tag(name: str) -> bool:
    """Whether ``name`` carries a Redis Cluster hash tag: ``{...}`` with content.

    Redis hashes only the part between the first ``{`` and the next ``}`` when that
    part is not empty; the rule is applied here exactly as the server applies it.
    """
    start = name.find("{")
    return start >= 0 and name.find("}", start + 1) > start + 1


def base_key(prefix: str, kind: str, name: str) -> str:
    """Return the key of ``name`` for data of ``kind``; every key of a name shares a slot.

    Three forms, told apart by the character after ``kind``, so that no two names and
    no two kinds ever share a key:

    - ``<prefix><kind>:{<name>}`` for most names (``asynclock:lock:{jobs:report}``):
      the name is its own hash tag;
    - ``<prefix><kind>=<name>`` for a name that carries a hash tag of its own
      (``asynclock:lock={account:7}:debit``): names that share a tag share a Redis
      Cluster slot and can be locked together by one script;
    - ``<prefix><kind>#{<digest>}<name>`` for a name containing ``}`` without a tag,
      which could not be wrapped in braces whole.
    """
    if has_hash_tag(name):
        return f"{prefix}{kind}={name}"
    if "}" not in name:
        return f"{prefix}{kind}:{{{name}}}"
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    return f"{prefix}{kind}#{{{digest}}}{name}"


def owner_key(prefix: str, name: str) -> str:
    """Return the key that holds ``name``'s current token."""
    return base_key(prefix, "lock", name)


def fence_key(prefix: str, name: str) -> str:
    """Return the key that counts ``name``'s fencing tokens."""
    return base_key(prefix, "fence", name)


def tombstone_key(prefix: str, name: str) -> str:
    """Return the key that remembers the tokens recently released on ``name``."""
    return base_key(prefix, "releases", name)


def line_keys(prefix: str, name: str) -> tuple[str, str]:
    """Return the keys of the processes waiting for ``name``: by arrival, by lapse."""
    return base_key(prefix, "line", name), base_key(prefix, "line-alive", name)


@dataclass(frozen=True, slots=True)
class NamedLocks(ExclusiveNames):
    """The :class:`~asynclock._resource.Resource` of exclusive locks over ``names``."""

    prefix: str
    names: tuple[str, ...]
    owner_keys: tuple[str, ...] = field(init=False)
    keys: tuple[str, ...] = field(init=False)
    line_keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        owners = tuple(owner_key(self.prefix, name) for name in self.names)
        fences = tuple(fence_key(self.prefix, name) for name in self.names)
        lines = tuple(line_keys(self.prefix, name) for name in self.names)
        tombstones = tuple(tombstone_key(self.prefix, name) for name in self.names)
        object.__setattr__(self, "owner_keys", owners)
        # The keys of the acquire and release scripts: owner, fence, line, alive,
        # tombstone.
        keys = tuple(
            key
            for owner, fence, line, tombstone in zip(owners, fences, lines, tombstones, strict=True)
            for key in (owner, fence, *line, tombstone)
        )
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "line_keys", tuple(key for line in lines for key in line))

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(prefix: str, names: tuple[str, ...]) -> NamedLocks:
        """The locks over ``names`` with ``prefix``, shared by every lock object on them.

        Lock objects are often made per use (``async with Mutex(client, name)``);
        working out the keys costs more than an uncontended acquire's own Python, so
        the value, which never changes, is kept for the most recent names.
        """
        return NamedLocks(prefix, names)

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        """Take every name for ``token`` at once, or report how long the holder has.

        With a ``waiter`` id, a refusal takes (or keeps) that process's place in the
        line of every name, and success does with it what ``place`` says.
        """
        # Without a waiter, the line's arguments are left out (fewer bytes to send).
        args = (token, ttl_ms, waiter, place, PLACE_MS) if waiter else (token, ttl_ms)
        reply = await _scripts.ACQUIRE(client, self.keys, args)
        if int(reply[0]) == 1:
            return Grant(True, tuple(map(int, reply[1:])))
        pttl = int(reply[1])
        return Grant(False, (), retry_after=pttl / 1000 if pttl > 0 else None)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the TTL of every name if ``token`` still holds them all."""
        return int(await _scripts.EXTEND(client, self.owner_keys, (token, ttl_ms))) == 1

    async def release(self, client: Any, token: str) -> bool:
        """Delete the names ``token`` holds; report whether it held them all."""
        reply = await _scripts.RELEASE(client, self.keys, (token, RELEASE_TOMBSTONE_MS))
        return int(reply[0]) == len(self.names)

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release, or give every name straight to ``to`` if the script allows it."""
        args = (
            token,
            RELEASE_TOMBSTONE_MS,
            to.token,
            to.ttl_ms,
            to.waiter,
            to.place,
            "1" if to.jump_line else "",
            PLACE_MS,
        )
        reply = await _scripts.HAND_OVER(client, self.keys, args)
        fences = tuple(map(int, reply[1:])) or None
        return HandOver(int(reply[0]) == len(self.names), fences)

    async def give_back(self, client: Any, token: str) -> int:
        """Free the names ``token`` holds without a tombstone; return how many.

        For a lock that took these names and must let them go before trying again
        with the same token, which a tombstone would refuse (see ``SlotGroups`` in ``_slots.py``).
        """
        return int(await _scripts.FORCE_RELEASE(client, self.keys, (token,)))

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up ``waiter``'s place in the line of every name."""
        async with client.pipeline(transaction=False) as pipe:
            for key in self.line_keys:
                pipe.zrem(key, waiter)
            await pipe.execute()

    async def locked(self, client: Any) -> bool:
        """Report whether any of the names is held by anyone."""
        # One EXISTS, the names sharing a slot: a cluster client's own multi-key
        # EXISTS is a pipeline per slot, which a migration can break with errors of
        # the client library's own (see run_command).
        return int(await _scripts.run_command(client, "EXISTS", *self.owner_keys)) > 0
