"""Bad input is refused with TypeError/ValueError before any command reaches Redis."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from asynclock import ExponentialBackoff, LimitRetries, LinearBackoff, Mutex, _timing
from asynclock._server import free_port
from asynclock._timing import LeasePolicy

BAD_MUTEX_ARGUMENTS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"name": ""}, ValueError),
    ({"name": None}, TypeError),
    ({"name": b"bytes"}, TypeError),
    ({"name": 7}, TypeError),
    ({"ttl": 0}, ValueError),
    ({"ttl": -1.0}, ValueError),
    ({"ttl": math.inf}, ValueError),
    ({"ttl": math.nan}, ValueError),
    ({"ttl": 0.005}, ValueError),
    ({"ttl": 1e300}, ValueError),  # more than Redis would keep a key
    ({"hold_at_least": 1e12}, ValueError),
    ({"ttl": "30"}, TypeError),
    ({"ttl": None}, TypeError),
    ({"ttl": True}, TypeError),
    ({"timeout": 0}, ValueError),
    ({"timeout": -3}, ValueError),
    ({"timeout": math.inf}, ValueError),
    ({"timeout": math.nan}, ValueError),
    ({"timeout": "1"}, TypeError),
    ({"extend_interval": 30}, ValueError),
    ({"extend_interval": 31}, ValueError),
    ({"extend_interval": 0}, ValueError),
    ({"max_hold": 0}, ValueError),
    ({"max_hold": math.inf}, ValueError),
    ({"blocking": "yes"}, TypeError),
    ({"auto_extend": 1}, TypeError),
    ({"retry": 0.1}, TypeError),
    ({"on_lost": "print"}, TypeError),
    ({"prefix": "app{x}:"}, ValueError),
    ({"prefix": None}, TypeError),
]


@pytest.fixture
def unreachable() -> aredis.Redis:
    """A client of a port nothing listens on: any command sent would fail."""
    return aredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)


@pytest.mark.parametrize(("change", "error"), BAD_MUTEX_ARGUMENTS)
def test_bad_mutex_arguments_are_refused(
    unreachable: aredis.Redis, change: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"name": "x", **change}
    with pytest.raises(error):
        Mutex(unreachable, **arguments)


@pytest.mark.parametrize(
    ("blocking", "timeout", "error"),
    [
        (False, 1.0, ValueError),
        (True, 0, ValueError),
        (True, -1, ValueError),
        (True, math.nan, ValueError),
        (True, "1", TypeError),
        ("no", None, TypeError),
    ],
)
async def test_bad_acquire_arguments_are_refused_before_any_command(
    unreachable: aredis.Redis, blocking: Any, timeout: Any, error: type[Exception]
) -> None:
    # Had a command been sent, the unreachable server would have raised a
    # LockBackendError instead.
    with pytest.raises(error):
        await Mutex(unreachable, "x").acquire(blocking=blocking, timeout=timeout)


def test_a_synchronous_client_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"redis\.asyncio"):
        Mutex(redis.Redis(), "x")
    with pytest.raises(TypeError):
        Mutex(None, "x")
    with pytest.raises(TypeError):
        Mutex(object(), "x")


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearBackoff(delay=0),
        lambda: LinearBackoff(delay=math.inf),
        lambda: LinearBackoff(jitter=2),
        lambda: ExponentialBackoff(initial=0.5, maximum=0.1),
        lambda: ExponentialBackoff(multiplier=0.5),
        lambda: LimitRetries(LinearBackoff(), -1),
        lambda: LimitRetries(LinearBackoff(), 1.5),  # type: ignore[arg-type]
    ],
)
def test_bad_retry_strategies_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        make()


async def test_the_server_saw_no_command_from_refused_input(client: aredis.Redis) -> None:
    await client.config_resetstat()
    for change, _error in BAD_MUTEX_ARGUMENTS:
        with pytest.raises((TypeError, ValueError)):
            Mutex(client, **{"name": "x", **change})
    with pytest.raises(ValueError, match="blocking=False"):
        await Mutex(client, "x").acquire(blocking=False, timeout=1)
    stats = await client.info("commandstats")
    assert not any(key.startswith(("cmdstat_eval", "cmdstat_exists")) for key in stats)
    assert await client.dbsize() == 0


def test_a_client_of_another_library_is_refused() -> None:
    valkey = pytest.importorskip("valkey.asyncio")
    with pytest.raises(TypeError, match="redis-py asyncio client"):
        Mutex(valkey.Valkey(), "x")


def test_a_policy_is_built_once_per_arguments_and_their_types() -> None:
    # Locks made per request share their policy; a cached one must not let a value of
    # the wrong type through because it equals one seen before (True == 1).
    assert LeasePolicy.build(7) is LeasePolicy.build(7)
    assert LeasePolicy.build(7) is not LeasePolicy.build(7.0)
    LeasePolicy.build(1)
    with pytest.raises(TypeError):
        LeasePolicy.build(True)
    with pytest.raises(TypeError):
        LeasePolicy.build([7])  # unhashable: refused as before, not by the cache


def test_a_policy_with_a_hook_is_not_kept() -> None:
    class Hook:
        def __call__(self, loss: object) -> None:
            pass

    hook = Hook()
    gone = weakref.ref(hook)
    first = LeasePolicy.build(7, on_lost=hook)
    assert LeasePolicy.build(7, on_lost=hook) is not first
    del hook, first
    gc.collect()
    assert gone() is None


def test_the_policies_kept_are_bounded() -> None:
    for milliseconds in range(1000, 1600):
        LeasePolicy.build(milliseconds / 1000)
    assert len(_timing._POLICIES) <= _timing._POLICIES_KEPT
