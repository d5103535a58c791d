"""Locks on Redis behind the backend boundary: :class:`RedisBackend`.

The resources are the keys and scripts of each primitive (``_names.py``,
``_slots.py``, ``_permits.py``, ``_sides.py``, ``_outcomes.py``,
``_leadership.py``); the notifier is the client's pub/sub
subscriber (``_notify.py``).
"""

from __future__ import annotations

from typing import Any

from ._backend import Backend, Counted, Sides, check_client
from ._leadership import RedisLeadership
from ._names import NamedLocks
from ._notify import Notifications, notifier_for
from ._outcomes import RedisOutcomes
from ._permits import SemaphorePermits
from ._resource import Resource
from ._shapes import Mode
from ._sides import ReadWriteSide
from ._slots import resource_for_names


class RedisBackend(Backend):
    """Locks on Redis (or Valkey): standalone, Sentinel or Cluster, through redis-py.

    :param client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``
    :param owns_client: close the client at :meth:`aclose` (what
        :func:`~asynclock.connect` makes); a client given by the caller stays theirs
    """

    kind = "redis"
    spans_processes = True
    waits_for_replicas = True

    def __init__(self, client: Any, *, owns_client: bool = False) -> None:
        check_client(client)
        self._client = client
        self._owns_client = owns_client

    def __repr__(self) -> str:
        return f"<RedisBackend {self._client!r}>"

    @property
    def client(self) -> Any:
        """The redis-py client the scripts run on."""
        return self._client

    def locks(self, prefix: str, names: tuple[str, ...]) -> Resource:
        """One script's keys, or one group per cluster slot when names span several."""
        if len(names) == 1:
            return NamedLocks.of(prefix, names)
        return resource_for_names(self._client, prefix, names)

    def semaphore(self, prefix: str, name: str, limit: int, permits: int) -> Counted:
        """The semaphore's keys and scripts."""
        return SemaphorePermits(prefix, name, limit, permits)

    def read_write(self, prefix: str, name: str, mode: Mode) -> Sides:
        """The read-write lock's keys and scripts, for one side."""
        return ReadWriteSide(prefix, name, mode)

    def outcomes(self, prefix: str, name: str) -> RedisOutcomes:
        """The flight's outcome key and scripts."""
        return RedisOutcomes(prefix, name)

    def leadership(self, prefix: str, name: str) -> RedisLeadership:
        """The election's announcement key, scripts and subscription."""
        return RedisLeadership(prefix, name)

    def notifications(self) -> Notifications | None:
        """The client's pub/sub notifier (see ``_notify.py``)."""
        return notifier_for(self._client)

    async def aclose(self) -> None:
        """Close the client, if the backend made it."""
        if self._owns_client:
            await self._client.aclose()


def backend_for(client: object) -> Backend:
    """The backend a primitive runs on, from what it was given as its client.

    :raises TypeError: ``client`` is neither a backend nor a redis-py asyncio client
    """
    if isinstance(client, Backend):
        return client
    return RedisBackend(client)
