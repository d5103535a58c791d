"""asynclock: asyncio-native distributed locks on Redis (or in memory, for one process).

``async with Mutex(client, "jobs:report"):`` means exactly one holder runs the body,
across every process that shares the Redis server, and keeps meaning it when the
body outlives its TTL (auto-extend), when the lease is lost (the body is cancelled
and ``LockLost`` raised), and when a task is cancelled halfway through an acquire.
"""

from ._backend import Backend as Backend
from ._connect import connect as connect
from ._decorators import locked as locked
from ._decorators import single_flight as single_flight
from ._election import Election as Election
from ._election import LeaderInfo as LeaderInfo
from ._errors import FlightFailed as FlightFailed
from ._errors import LimitMismatch as LimitMismatch
from ._errors import LockBackendError as LockBackendError
from ._errors import LockError as LockError
from ._errors import LockLost as LockLost
from ._errors import LockNotAcquired as LockNotAcquired
from ._errors import LockNotOwned as LockNotOwned
from ._events import LockEvent as LockEvent
from ._events import set_verbosity as set_verbosity
from ._events import subscribe as subscribe
from ._flight import Serializer as Serializer
from ._flight import SingleFlight as SingleFlight
from ._lease import Lease as Lease
from ._lock import LockStatistics as LockStatistics
from ._memory import MemoryBackend as MemoryBackend
from ._multilock import MultiLock as MultiLock
from ._mutex import Mutex as Mutex
from ._redis import RedisBackend as RedisBackend
from ._retry import ExponentialBackoff as ExponentialBackoff
from ._retry import LimitRetries as LimitRetries
from ._retry import LinearBackoff as LinearBackoff
from ._retry import NoRetry as NoRetry
from ._retry import RetryStrategy as RetryStrategy
from ._rwlock import ReadLock as ReadLock
from ._rwlock import ReadWriteLock as ReadWriteLock
from ._rwlock import WriteLock as WriteLock
from ._semaphore import Semaphore as Semaphore

__all__ = [
    "Backend",
    "Election",
    "ExponentialBackoff",
    "FlightFailed",
    "LeaderInfo",
    "Lease",
    "LimitMismatch",
    "LimitRetries",
    "LinearBackoff",
    "LockBackendError",
    "LockError",
    "LockEvent",
    "LockLost",
    "LockNotAcquired",
    "LockNotOwned",
    "LockStatistics",
    "MemoryBackend",
    "MultiLock",
    "Mutex",
    "NoRetry",
    "ReadLock",
    "ReadWriteLock",
    "RedisBackend",
    "RetryStrategy",
    "Semaphore",
    "Serializer",
    "SingleFlight",
    "WriteLock",
    "connect",
    "locked",
    "set_verbosity",
    "single_flight",
    "subscribe",
]

__version__ = "0.1.0"

# Show the public names as asynclock.X in reprs, tracebacks and docs.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
