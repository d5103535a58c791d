"""An election's leader on Redis: its keys, scripts (``announce.lua``,
``leader.lua``) and the watchers' subscription, behind ``Election``.

Keys, with the name's hash tag: the lease's owner key, a ``Mutex``'s, and
``<prefix>leader:{<name>}``, the announcement of the term under way. Watchers hear
announcements and step-downs on both keys' channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from . import _scripts
from ._names import base_key, owner_key
from ._resource import BACKEND_ERRORS


@dataclass(frozen=True, slots=True)
class RedisLeadership:
    """The :class:`~asynclock._backend.Leadership` of the election ``name`` on Redis."""

    prefix: str
    name: str
    #: The owner key and the announcement key.
    keys: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        keys = (owner_key(self.prefix, self.name), base_key(self.prefix, "leader", self.name))
        object.__setattr__(self, "keys", keys)

    async def announce(self, client: Any, token: str, announcement: str) -> bool:
        """Store and publish ``announcement`` if ``token`` holds the lease."""
        return bool(int(await _scripts.ANNOUNCE(client, self.keys, (token, announcement))))

    async def leader(self, client: Any) -> tuple[Any, Any] | None:
        """The lease's holder token and the announcement (or ``None``), in one step;
        ``None`` when nobody holds the lease."""
        reply = await _scripts.LEADER(client, self.keys, ())
        return (reply[0], reply[1] or None) if reply else None

    async def tell_watchers(self, client: Any) -> None:
        """Publish a step-down (best effort: watchers read again at their interval).
        Not on a cluster client, whose watchers read at their interval."""
        if _scripts.is_cluster(client):
            return
        with contextlib.suppress(*BACKEND_ERRORS):
            await client.publish(self.keys[1], "")

    @contextlib.asynccontextmanager
    async def changes(self, client: Any) -> AsyncIterator[Changes]:
        """A subscription to the election's changes, for a watcher."""
        changes = Changes(client.pubsub() if _can_subscribe(client) else None)
        try:
            if changes.pubsub is not None:
                try:
                    await changes.pubsub.subscribe(*self.keys)
                except BACKEND_ERRORS:
                    await changes.drop()  # read every interval instead
            yield changes
        finally:
            if changes.pubsub is not None:
                await changes.pubsub.aclose()


class Changes:
    """A watcher's subscription: wakes at a message, or after a pause."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def next(self, seconds: float) -> None:
        """Return at the next message, or after ``seconds``."""
        if self.pubsub is None:
            await asyncio.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=left
                )
                if message is not None:
                    return
        except BACKEND_ERRORS:
            await self.drop()  # reads every interval from now on

    async def drop(self) -> None:
        """Close the subscription after a failure, whatever its state."""
        pubsub, self.pubsub = self.pubsub, None
        with contextlib.suppress(*BACKEND_ERRORS):
            await pubsub.aclose()


def _can_subscribe(client: Any) -> bool:
    """Whether ``client`` can give a watcher a pub/sub connection of its own: not a
    cluster client (its step-downs are not published), nor a pool of one connection
    (the subscription would take the one its reads need)."""
    if _scripts.is_cluster(client):
        return False
    max_connections = getattr(client.connection_pool, "max_connections", None)
    return max_connections is None or max_connections >= 2
