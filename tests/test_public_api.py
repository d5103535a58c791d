"""The public surface: what is exported, documented and typed."""

from __future__ import annotations

import inspect
from importlib import resources

import asynclock

PUBLIC = [
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


def test_exports_are_pinned() -> None:
    assert sorted(asynclock.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(asynclock, name).__module__ == "asynclock"


def test_every_public_name_and_member_has_a_docstring() -> None:
    for name in PUBLIC:
        obj = getattr(asynclock, name)
        assert inspect.getdoc(obj), name
        for member_name, member in vars(obj).items():
            if member_name.startswith("_"):
                continue
            if callable(member) or isinstance(member, property):
                assert inspect.getdoc(member), f"{name}.{member_name}"


def test_every_error_is_a_lock_error() -> None:
    for name in (
        "LockNotAcquired",
        "LockNotOwned",
        "LockLost",
        "LockBackendError",
        "LimitMismatch",
        "FlightFailed",
    ):
        assert issubclass(getattr(asynclock, name), asynclock.LockError)


def test_the_package_ships_its_types_and_scripts() -> None:
    files = resources.files("asynclock")
    assert files.joinpath("py.typed").is_file()
    scripts = ["common", "acquire", "extend", "release", "hand_over"]
    scripts += ["semaphore_acquire", "semaphore_extend", "semaphore_release", "semaphore_inspect"]
    scripts += ["announce", "leader", "look", "land", "wake"]
    scripts += ["rw_acquire", "rw_extend", "rw_release", "rw_leave", "rw_inspect"]
    for script in scripts:
        assert files.joinpath("scripts", f"{script}.lua").is_file()
