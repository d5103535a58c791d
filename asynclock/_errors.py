"""The exceptions asynclock raises.

Our exception hierarchy::

    LockError                 base class: catch this to catch everything below
     ├── LockNotAcquired      the lock could not be had: not blocking, timeout passed,
     │                        or the retry strategy gave up
     ├── LockNotOwned         extend() or release() of a lease we no longer hold
     ├── LockLost             ownership was lost while the body of ``async with`` ran;
     │                        the body was cancelled and this is raised in its place
     ├── LockBackendError     Redis could not be reached or answered with an error
     │                        (connection lost, timeout, server restart, ACL refusal);
     │                        the redis-py exception is chained as ``__cause__``
     └── FlightFailed         a single flight's job failed where it ran (in another
                              process, or this one): its type name and message

Bad arguments are not lock errors: they raise ``TypeError`` or ``ValueError`` before
any command is sent.
"""

from __future__ import annotations


class LockError(Exception):
    """Base class of every error asynclock raises about a lock."""


class LockNotAcquired(LockError):
    """The lock could not be acquired.

    Raised by ``async with`` when the lock is held elsewhere and ``blocking`` is off,
    when ``timeout`` seconds passed while waiting, or when the retry strategy gave up.
    ``acquire()`` returns ``False`` in the same cases instead.

    :ivar name: the lock's name (or names, joined with ``", "``)
    :ivar waited: seconds spent trying
    """

    def __init__(self, name: str, waited: float) -> None:
        super().__init__(f"could not acquire lock {name!r} (gave up after {waited:.3f} s)")
        self.name = name
        self.waited = waited


class LockNotOwned(LockError):
    """An operation needed the lease to be ours, and it is not (or no longer).

    Raised by ``extend()`` and ``release()`` when the token in Redis is gone or
    belongs to someone else (the lease expired, or the key was deleted), when the
    lease was already declared lost, or when this task never acquired the lock.

    :ivar name: the lock's name
    :ivar reason: why the lease is not ours
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"lock {name!r} is not held by this owner: {reason}")
        self.name = name
        self.reason = reason


class LockLost(LockError):
    """Ownership was lost while the critical section ran.

    When the auto-extend task finds the token gone, when extensions kept failing until
    the lease ran out on the client's own clock, or when ``max_hold`` passed, the body
    of ``async with`` is cancelled and this exception is raised from the ``async with``
    statement instead. It is also raised when the release at the end of the body finds
    that the lease had already gone: the body may have run unprotected.

    :ivar name: the lock's name
    :ivar reason: what made the lease count as lost
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"lost lock {name!r}: {reason}")
        self.name = name
        self.reason = reason


class LockBackendError(LockError):
    """Redis could not be reached, timed out, or answered with an error.

    The original redis-py exception (``ConnectionError``, ``TimeoutError``,
    ``ResponseError``, ...) is chained as ``__cause__``. When this is raised by an
    acquire, any hold the failed call may have left has been cleaned up by token, or
    (if Redis stayed unreachable) expires on its own after ``ttl``.

    :ivar name: the lock's name
    """

    def __init__(self, name: str, action: str, error: BaseException, *, what: str = "lock") -> None:
        super().__init__(f"{action} of {what} {name!r} failed: {type(error).__name__}: {error}")
        self.name = name


class FlightFailed(LockError):
    """The job of a single flight raised, and this caller shares its outcome.

    Callers that waited for a flight led elsewhere receive the leader's error as
    this: its type's name and its message, never the object itself (nothing read
    from Redis is unpickled). The leader's own callers receive the original
    exception.

    :ivar name: the flight's name
    :ivar error_type: the name of the exception's type, such as ``"KeyError"``
    :ivar message: the exception's message (``str(error)``)
    """

    def __init__(self, name: str, error_type: str, message: str) -> None:
        super().__init__(f"single flight {name!r} failed: {error_type}: {message}")
        self.name = name
        self.error_type = error_type
        self.message = message


class LimitMismatch(LockError):
    """A semaphore was acquired with a limit other than the one its live holders use.

    Two callers disagreeing on a semaphore's limit would each enforce their own and
    the smaller would mean nothing; asynclock refuses instead. Once every holder with
    the old limit is gone, a new limit takes effect (as in a rolling deploy).

    :ivar name: the semaphore's name
    :ivar limit: the limit this caller asked for
    :ivar limit_in_force: the limit the live holders use
    """

    def __init__(self, name: str, limit: int, limit_in_force: int) -> None:
        super().__init__(
            f"semaphore {name!r} is held with limit={limit_in_force}; this one has limit={limit}"
        )
        self.name = name
        self.limit = limit
        self.limit_in_force = limit_in_force
