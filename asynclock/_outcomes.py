"""A single flight's outcome on Redis: its keys and scripts (``look.lua``,
``land.lua``, ``wake.lua``), behind ``SingleFlight``.

Keys, with the name's hash tag (one Redis Cluster slot): the lease's owner and fence
keys, a ``Mutex``'s (``_names.py``), and ``<prefix>flight:{<name>}``, a hash of the
landed outcome's ``fence``, ``until`` and ``outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _scripts
from ._names import base_key, fence_key, owner_key


@dataclass(frozen=True, slots=True)
class RedisOutcomes:
    """The :class:`~asynclock._backend.Outcomes` of the flight ``name`` on Redis."""

    prefix: str
    name: str
    #: The owner key, the fence key and the outcome key.
    keys: tuple[str, str, str] = field(init=False)

    def __post_init__(self) -> None:
        keys = (
            owner_key(self.prefix, self.name),
            fence_key(self.prefix, self.name),
            base_key(self.prefix, "flight", self.name),
        )
        object.__setattr__(self, "keys", keys)

    @property
    def channels(self) -> tuple[str, ...]:
        """The lease's release channel and the landing's."""
        return (self.keys[0], self.keys[2])

    async def look(self, client: Any, floor: str) -> tuple[int, str, Any]:
        """See ``look.lua``: what a caller finds, its floor, the outcome or the pttl."""
        kind, new_floor, found = await _scripts.LOOK(client, self.keys, (floor,))
        return int(kind), str(int(new_floor)), found if int(kind) == 2 else int(found)

    async def land(
        self, client: Any, token: str, fence: int, outcome: bytes, keep_ms: int, grace_ms: int
    ) -> bool:
        """See ``land.lua``: store the outcome if ``token`` still holds the lease."""
        args = (token, fence, outcome, keep_ms, grace_ms)
        return bool(int(await _scripts.LAND(client, (self.keys[0], self.keys[2]), args)))

    async def wake(self, client: Any) -> None:
        """See ``wake.lua``: wake the followers, one of whom leads now."""
        await _scripts.WAKE(client, (self.keys[2],), ())
