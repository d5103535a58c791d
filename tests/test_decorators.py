"""@locked against the real server: names, clients, skip vs wait, limit, loss, events;
and @single_flight."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as redis

from asynclock import (
    LockError,
    LockEvent,
    LockLost,
    LockNotAcquired,
    Mutex,
    Semaphore,
    locked,
    set_verbosity,
    single_flight,
    subscribe,
)
from asynclock._server import RedisServer

from .conftest import owner_key


@pytest.fixture
def events() -> Iterator[list[LockEvent]]:
    """Every event emitted during the test."""
    seen: list[LockEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


def names_of(events: list[LockEvent], prefix: str = "task_") -> list[str]:
    """The event names, in order, of the events whose name starts with ``prefix``."""
    return [event.event for event in events if event.event.startswith(prefix)]


class Reports:
    """A service with its client on an attribute, as users write them."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.seen_keys: list[bytes | None] = []

    @locked("report:{user_id}:{kind}", client="redis", ttl=5)
    async def build(self, user_id: int, kind: str = "daily") -> str:
        """Build a report."""
        self.seen_keys.append(await self.redis.get(owner_key(f"report:{user_id}:{kind}")))
        return f"report {user_id} {kind}"

    @locked("by-callable:{user_id}", client=lambda self: self.redis)
    async def by_callable(self, user_id: int) -> int:
        """Find the client through a callable."""
        return user_id


async def test_the_name_is_formatted_from_the_arguments_with_defaults(
    client: redis.Redis,
) -> None:
    reports = Reports(client)
    assert await reports.build(7) == "report 7 daily"
    assert await reports.build(user_id=8, kind="weekly") == "report 8 weekly"
    assert all(key is not None for key in reports.seen_keys)  # held during the call
    assert await client.exists(owner_key("report:7:daily")) == 0  # released after
    assert await reports.by_callable(3) == 3


async def test_plain_functions_and_the_default_name(client: redis.Redis) -> None:
    @locked(client=client)
    async def nightly() -> str:
        return "done"

    @locked("zero-arg", client=lambda: client)
    async def from_factory() -> str:
        return "ok"

    assert await nightly() == "done"
    assert await from_factory() == "ok"
    async with Mutex(client, f"{__name__}.{nightly.__qualname__}"):
        with pytest.raises(LockNotAcquired):
            await locked(client=client, timeout=0.1)(nightly.__wrapped__)()  # type: ignore[attr-defined]


async def test_skip_if_locked_returns_none_at_once_and_emits_task_skipped(
    client: redis.Redis, events: list[LockEvent]
) -> None:
    @locked("job", client=client, skip_if_locked=True)
    async def job() -> str:
        return "ran"

    async with Mutex(client, "job"):
        started = time.monotonic()
        assert await job() is None
        assert time.monotonic() - started < 1.0
    assert await job() == "ran"
    assert names_of(events) == [
        "task_skipped",
        "task_started",
        "task_succeeded",
        "task_finished",
    ]


async def test_without_skip_a_call_waits_then_runs_or_times_out(client: redis.Redis) -> None:
    @locked("job", client=client, timeout=5)
    async def job() -> str:
        return "ran"

    @locked("job", client=client, timeout=0.2)
    async def impatient() -> str:
        return "ran"

    holder = Mutex(client, "job")
    await holder.acquire()
    with pytest.raises(LockNotAcquired):
        await impatient()
    waiting = asyncio.create_task(job())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await holder.release()
    assert await waiting == "ran"


async def test_limit_uses_a_semaphore(client: redis.Redis) -> None:
    inside = most = 0

    @locked("api", client=client, limit=2, timeout=10)
    async def call() -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.02)
        inside -= 1

    await asyncio.gather(*(call() for _ in range(6)))
    assert most == 2


def test_the_wrapper_keeps_name_doc_and_signature(client: redis.Redis) -> None:
    assert Reports.build.__name__ == "build"
    assert Reports.build.__doc__ == "Build a report."
    assert str(inspect.signature(Reports.build)) == (
        "(self, user_id: 'int', kind: 'str' = 'daily') -> 'str'"
    )
    assert inspect.iscoroutinefunction(Reports.build)


@pytest.mark.parametrize(
    ("name", "options", "error"),
    [
        ("user:{missing}", {}, ValueError),
        ("user:{}", {}, ValueError),
        ("user:{0}", {}, ValueError),
        ("", {}, ValueError),
        (None, {"ttl": 0}, ValueError),
        (None, {"limit": 0}, ValueError),
        (None, {"timeout": -1}, ValueError),
        (None, {"skip_if_locked": True, "timeout": 1}, ValueError),
        (None, {"hold_at_least": 10, "hold_at_most": 5}, ValueError),
        (None, {"skip_if_locked": "yes"}, TypeError),
        (None, {"client": None}, TypeError),
    ],
)
def test_bad_decorations_fail_at_decoration_time(
    client: redis.Redis, name: str | None, options: dict[str, object], error: type
) -> None:
    arguments: dict[str, object] = {"client": client, **options}

    async def function(user_id: int) -> None:
        pass

    with pytest.raises(error):
        locked(name, **arguments)(function)  # type: ignore[call-overload]


def test_a_non_coroutine_function_is_refused(client: redis.Redis) -> None:
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        locked(client=client)(plain)  # type: ignore[arg-type]


async def test_loss_mid_run_cancels_the_call_and_emits_the_sequence(
    client: redis.Redis, events: list[LockEvent]
) -> None:
    reached_the_end = False

    @locked("job", client=client, ttl=0.6)
    async def job() -> None:
        nonlocal reached_the_end
        await client.delete(owner_key("job"))
        await asyncio.sleep(5)
        reached_the_end = True

    with pytest.raises(LockLost):
        await job()
    assert not reached_the_end
    sequence = [e.event for e in events if e.event not in {"lock_requested", "lock_acquired"}]
    assert sequence == ["task_started", "lock_lost", "task_failed", "task_finished"]
    failed = next(event for event in events if event.event == "task_failed")
    assert isinstance(failed.error, LockLost)
    assert failed.lock == "job"
    assert failed.task is not None
    assert failed.task.endswith("job")
    assert failed.fencing_token is not None


async def test_failure_events_carry_the_error(client: redis.Redis, events: list[LockEvent]) -> None:
    @locked("job", client=client)
    async def job() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await job()
    assert names_of(events) == ["task_started", "task_failed", "task_finished"]
    assert isinstance(events[-2].error, KeyError)
    assert names_of(events, "lock_") == ["lock_requested", "lock_acquired", "lock_released"]


async def test_verbosity_chooses_what_reaches_the_logger(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    @locked("job", client=client)
    async def job() -> None:
        pass

    caplog.set_level(logging.DEBUG, logger="asynclock")
    try:
        await job()
        default = [record.event for record in caplog.records]  # type: ignore[attr-defined]
        caplog.clear()
        set_verbosity("verbose")
        await job()
        verbose = [record.event for record in caplog.records]  # type: ignore[attr-defined]
        caplog.clear()
        set_verbosity("off")
        await job()
        assert caplog.records == []
    finally:
        set_verbosity("default")
    assert default == ["task_started", "task_succeeded", "task_finished"]
    assert verbose == [
        "lock_requested",
        "lock_acquired",
        "task_started",
        "lock_released",
        "task_succeeded",
        "task_finished",
    ]
    with pytest.raises(ValueError, match="verbosity"):
        set_verbosity("loud")  # type: ignore[arg-type]


async def test_a_stalled_server_gives_extend_failed_then_lost_then_failed(
    events: list[LockEvent],
) -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.1)
        admin = redis.Redis.from_url(server.url)

        @locked("job", client=client, ttl=0.6)
        async def job() -> None:
            await admin.client_pause(2000, all=False)  # writes stall: no extension works
            await asyncio.sleep(5)

        with pytest.raises(LockLost):
            await job()
        await admin.client_unpause()
        await client.aclose()
        await admin.aclose()
    sequence = [
        event.event for event in events if event.event not in ("lock_requested", "lock_acquired")
    ]
    assert sequence[0] == "task_started"
    assert sequence[1] == "lock_extend_failed"
    assert sequence[-3:] == ["lock_lost", "task_failed", "task_finished"]
    assert set(sequence[1:-3]) == {"lock_extend_failed"}


async def test_a_decorated_function_calling_itself_is_refused_not_deadlocked(
    client: redis.Redis,
) -> None:
    calls = 0

    @locked("recursive", client=client)  # timeout=None: a wait would never end
    async def walk(depth: int) -> None:
        nonlocal calls
        calls += 1
        if depth:
            await walk(depth - 1)

    async with asyncio.timeout(2):
        with pytest.raises(LockError, match="already holds 'recursive'"):
            await walk(1)
    assert calls == 1
    await walk(0)  # the name was released on the way out


async def test_every_event_of_a_limited_call_names_the_semaphores_key(
    client: redis.Redis, events: list[LockEvent]
) -> None:
    @locked("quota", client=client, limit=2)
    async def call() -> None:
        pass

    await call()
    keys = {event.key for event in events if event.event.startswith(("task_", "lock_"))}
    assert len(keys) == 1, keys  # task_* and lock_* events name one key
    assert keys == {Semaphore(client, "quota", limit=2).key}


async def test_a_partial_of_a_coroutine_function_can_be_decorated_with_a_name(
    client: redis.Redis,
) -> None:
    async def report(user_id: int, kind: str) -> str:
        return f"{user_id}:{kind}"

    daily = functools.partial(report, kind="daily")
    assert await locked("report:{user_id}", client=client)(daily)(7) == "7:daily"
    with pytest.raises(TypeError, match="name"):
        locked(client=client)(daily)  # no name to derive: refused at decoration


async def test_a_cancelled_call_is_task_cancelled_not_task_failed(
    client: redis.Redis, events: list[LockEvent], caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    @locked("cancelled", client=client)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    caplog.set_level(logging.INFO, logger="asynclock")
    call = asyncio.create_task(slow())
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert names_of(events) == ["task_started", "task_cancelled", "task_finished"]
    cancelled = [
        record for record in caplog.records if getattr(record, "event", "") == "task_cancelled"
    ]
    assert cancelled
    assert all(record.levelno < logging.WARNING for record in cancelled)


async def test_single_flight_runs_a_method_once_for_concurrent_calls_with_one_name(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    class Reports:
        def __init__(self, redis_client: redis.Redis) -> None:
            self.redis = redis_client
            self.built: list[int] = []

        @single_flight("report:{user_id}", client="redis", timeout=20.0)
        async def build(self, user_id: int) -> dict[str, int]:
            """Build a user's report."""
            self.built.append(user_id)
            await asyncio.sleep(0.1)
            return {"user": user_id}

    replicas = [Reports(client), Reports(make_client())]
    calls = [r.build(user_id) for r in replicas for user_id in (7, 7, 8, 8)]
    assert await asyncio.gather(*calls) == [{"user": n} for n in (7, 7, 8, 8)] * 2
    assert sorted(replicas[0].built + replicas[1].built) == [7, 8]  # once per name
    assert Reports.build.__doc__ == "Build a user's report."


def test_single_flight_refuses_bad_options_and_templates_at_decoration(
    client: redis.Redis,
) -> None:
    with pytest.raises(ValueError, match="keep_for must be positive"):
        single_flight("x", client=client, keep_for=0)
    with pytest.raises(TypeError):
        single_flight("x", client=client, serializer=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown parameters"):

        @single_flight("report:{nobody}", client=client)
        async def build(user_id: int) -> None: ...

    with pytest.raises(TypeError, match="coroutine function"):

        @single_flight("x", client=client)  # type: ignore[arg-type]
        def synchronous() -> None: ...
