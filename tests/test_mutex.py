"""Mutex against the real server: holding, waiting, extension, loss, release."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import pytest
import redis.asyncio as redis

from asynclock import (
    LimitRetries,
    LinearBackoff,
    LockError,
    LockLost,
    LockNotAcquired,
    LockNotOwned,
    MultiLock,
    Mutex,
    _scripts,
)
from asynclock import _lock as lock_module

from .conftest import cancel_at_random_turns, owner_key


async def test_async_with_holds_the_token_in_redis_and_releases(client: redis.Redis) -> None:
    lock = Mutex(client, "jobs:report", ttl=5)
    async with lock as lease:
        assert await client.get(owner_key("jobs:report")) == lease.token.encode()
        assert lock.owned
        assert await lock.locked()
        assert lock.fencing_token == lease.fencing_token
    assert not lock.owned
    assert not await lock.locked()
    assert await client.exists(owner_key("jobs:report")) == 0


async def test_try_acquire_and_timeout(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=5)
    other = Mutex(client, "x", ttl=5, timeout=0.2)
    assert await holder.acquire(blocking=False)
    assert not await other.acquire(blocking=False)
    started = time.monotonic()
    assert not await other.acquire(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    with pytest.raises(LockNotAcquired) as caught:
        async with other:
            pytest.fail("the body must not run")
    assert caught.value.waited >= 0.2
    with pytest.raises(LockNotAcquired):
        async with Mutex(client, "x", blocking=False):
            pytest.fail("the body must not run")
    await holder.release()
    assert await other.acquire(blocking=False)
    await other.release()


async def test_timeout_cannot_be_combined_with_blocking_false(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="blocking=False"):
        await Mutex(client, "x").acquire(blocking=False, timeout=1)


async def test_retry_strategy_limits_the_tries(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await Mutex(client, "x", ttl=5).acquire()
    tries = 0
    real = _scripts.run_command

    async def counting(on: object, *command: object) -> object:
        nonlocal tries
        tries += command[0] == "EVALSHA"  # a try: the acquire script
        return await real(on, *command)

    monkeypatch.setattr(_scripts, "run_command", counting)
    lock = Mutex(client, "x", retry=LimitRetries(LinearBackoff(0.01), 3))
    assert not await lock.acquire()
    assert tries == 4


async def test_a_waiter_gets_the_lock_when_the_holder_releases(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=5)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=5, timeout=5).acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await holder.release()
    assert await waiter


async def test_a_waiter_gets_the_lock_when_a_crashed_holders_ttl_runs_out(
    client: redis.Redis,
) -> None:
    # A holder that never releases nor extends: its key simply expires.
    await client.set(owner_key("x"), "crashed-holder", px=300)
    started = time.monotonic()
    async with Mutex(client, "x", timeout=5):
        waited = time.monotonic() - started
    assert 0.2 < waited < 2.0


async def test_fencing_tokens_increase_across_successive_holders(client: redis.Redis) -> None:
    tokens = []
    for _ in range(5):
        async with Mutex(client, "x") as lease:
            tokens.append(lease.fencing_token)
    assert tokens == sorted(set(tokens))


async def test_tasks_sharing_one_lock_object_exclude_each_other(client: redis.Redis) -> None:
    lock = Mutex(client, "shared", ttl=5, timeout=10)
    inside = 0
    most = 0
    tokens: list[int] = []

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with lock as lease:
                inside += 1
                most = max(most, inside)
                tokens.append(lease.fencing_token)
                await asyncio.sleep(0.002)
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert most == 1
    assert len(tokens) == 40
    assert tokens == sorted(set(tokens))


async def test_the_lock_is_not_reentrant(client: redis.Redis) -> None:
    lock = Mutex(client, "x")
    async with lock:
        with pytest.raises(LockError, match="already held by this task"):
            await lock.acquire()


async def test_a_task_cannot_wait_for_a_name_it_holds_through_another_object(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    async with Mutex(client, "job"):
        # Another object, even on another client of the same server: refused at once,
        # not a wait for ever (timeout=None).
        async with asyncio.timeout(2):  # in this task: wait_for would run another
            for other in (Mutex(client, "job"), Mutex(make_client(), "job")):
                with pytest.raises(LockError, match="already holds 'job' through another"):
                    await other.acquire()
            with pytest.raises(LockError, match="already holds 'job'"):
                await MultiLock(client, ["other", "job"]).acquire()
            # A try that does not wait answers as for any held lock.
            assert not await Mutex(client, "job").acquire(blocking=False)
        # Other names, and other tasks, go on as before.
        async with Mutex(client, "not-job"):
            pass
        assert not await asyncio.create_task(Mutex(client, "job").acquire(blocking=False))
    async with Mutex(client, "job"):  # released: the task may take it again
        pass


async def test_auto_extend_keeps_a_body_longer_than_the_ttl(client: redis.Redis) -> None:
    lock = Mutex(client, "x", ttl=0.3)
    async with lock as lease:
        await asyncio.sleep(1.0)  # more than three TTLs
        assert await client.get(owner_key("x")) == lease.token.encode()
        assert not await Mutex(client, "x").acquire(blocking=False)
    assert lease.extensions >= 6


async def test_without_auto_extend_the_body_is_cancelled_when_the_ttl_runs_out(
    client: redis.Redis,
) -> None:
    reached_the_end = False
    started = time.monotonic()
    with pytest.raises(LockLost, match="ran out"):
        async with Mutex(client, "x", ttl=0.3, auto_extend=False):
            await asyncio.sleep(3)
            reached_the_end = True
    assert not reached_the_end
    # Lost on the client's own clock, before the server's expiry.
    assert time.monotonic() - started < 0.3 + 0.2


async def test_manual_extend_pushes_the_deadline(client: redis.Redis) -> None:
    async with Mutex(client, "x", ttl=0.4, auto_extend=False) as lease:
        for _ in range(4):
            await asyncio.sleep(0.2)
            await lease.extend()
        assert lease.extensions == 4
        assert lease.owned


async def test_deleting_the_key_makes_the_holder_lose_within_a_third_of_the_ttl(
    client: redis.Redis,
) -> None:
    ttl = 0.9
    reached_the_end = False
    with pytest.raises(LockLost, match="token was gone") as caught:
        async with Mutex(client, "x", ttl=ttl):
            await client.delete(owner_key("x"))
            deleted_at = time.monotonic()
            await asyncio.sleep(5)
            reached_the_end = True
    detected = time.monotonic() - deleted_at
    assert not reached_the_end
    assert detected < ttl / 3 + 0.2
    assert caught.value.name == "x"


async def test_on_lost_hooks_are_called(client: redis.Redis) -> None:
    seen: list[LockLost] = []
    awaited = asyncio.Event()

    async def async_hook(loss: LockLost) -> None:
        awaited.set()

    with pytest.raises(LockLost):
        async with Mutex(client, "x", ttl=0.3, on_lost=seen.append):
            await client.delete(owner_key("x"))
            await asyncio.sleep(3)
    with pytest.raises(LockLost):
        async with Mutex(client, "y", ttl=0.3, on_lost=async_hook):
            await client.delete(owner_key("y"))
            await asyncio.sleep(3)
    await asyncio.wait_for(awaited.wait(), 1)
    assert len(seen) == 1
    assert isinstance(seen[0], LockLost)


async def test_max_hold_stops_a_wedged_body_and_frees_the_name(client: redis.Redis) -> None:
    with pytest.raises(LockLost, match="max_hold"):
        async with Mutex(client, "x", ttl=1.0, max_hold=0.4):
            await asyncio.sleep(5)
    await asyncio.sleep(0.05)  # the clean-up runs beside the raise
    assert await client.exists(owner_key("x")) == 0


async def test_release_and_extend_after_loss_raise_lock_not_owned(client: redis.Redis) -> None:
    lock = Mutex(client, "x", ttl=0.3, auto_extend=False)
    assert await lock.acquire()
    await asyncio.sleep(0.4)
    assert not lock.owned
    with pytest.raises(LockNotOwned):
        await lock.extend()
    with pytest.raises(LockNotOwned):
        await lock.release()


async def test_a_late_release_does_not_delete_the_next_holders_lock(client: redis.Redis) -> None:
    first = Mutex(client, "x", ttl=0.2, auto_extend=False)
    assert await first.acquire()
    await client.delete(owner_key("x"))  # as if it had expired
    second = Mutex(client, "x", ttl=5)
    assert await second.acquire(blocking=False)
    with pytest.raises(LockNotOwned):
        await first.release()
    assert second.owned
    assert await client.get(owner_key("x")) == second.lease.token.encode()  # type: ignore[union-attr]


async def test_release_without_acquire_raises_lock_not_owned(client: redis.Redis) -> None:
    with pytest.raises(LockNotOwned, match="not acquired"):
        await Mutex(client, "x").release()
    with pytest.raises(LockNotOwned):
        _ = Mutex(client, "x").fencing_token


async def test_release_found_lost_at_the_end_raises_lock_lost(client: redis.Redis) -> None:
    with pytest.raises(LockLost, match="gone at release"):
        async with Mutex(client, "x", ttl=30):
            await client.delete(owner_key("x"))  # long before the next extension


async def test_a_body_error_wins_over_a_loss_found_at_release(client: redis.Redis) -> None:
    with pytest.raises(KeyError) as caught:
        async with Mutex(client, "x", ttl=30):
            await client.delete(owner_key("x"))
            raise KeyError("body")
    assert any("gone at release" in note for note in caught.value.__notes__)


async def test_a_cancelled_body_still_releases(client: redis.Redis) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with Mutex(client, "x"):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await client.exists(owner_key("x")) == 0


async def test_a_cancelled_release_still_runs_to_completion(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    lock = Mutex(client, "x")
    assert await lock.acquire()
    other = make_client()
    await other.ping()  # connected, so that DEBUG SLEEP starts at once
    # Hold the server for 200 ms so that the release is surely in flight when cancelled.
    blocker = asyncio.create_task(other.execute_command("DEBUG", "SLEEP", "0.2"))
    await asyncio.sleep(0.05)
    lease = lock.lease
    assert lease is not None
    release = asyncio.create_task(lease.release())  # another task, handed the lease
    await asyncio.sleep(0.02)
    release.cancel()
    with pytest.raises(asyncio.CancelledError):
        await release
    # The cancelled call returned only once the release was done.
    assert await client.exists(owner_key("x")) == 0
    await blocker


async def test_acquires_cancelled_at_random_moments_leave_nothing_held(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    async def nothing_left() -> None:
        # Whatever the command did in Redis, nothing is left behind.
        assert await client.exists(owner_key("x")) == 0

    cancelled, acquired = await cancel_at_random_turns(
        lambda: Mutex(client, "x", ttl=30), 1, nothing_left
    )
    # Both outcomes happened: cancellations landed before, during and after commands.
    assert cancelled >= 20
    assert acquired >= 20
    assert await client.exists(owner_key("x")) == 0


async def test_an_acquire_that_times_out_mid_command_leaves_nothing(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    other = make_client()
    await other.ping()  # connected, so that DEBUG SLEEP starts at once
    await client.ping()
    # The server is busy: our acquire command queues behind DEBUG SLEEP and our wait
    # limit passes while it is in flight; the command then runs and takes the lock.
    blocker = asyncio.create_task(other.execute_command("DEBUG", "SLEEP", "0.5"))
    await asyncio.sleep(0.05)
    assert not await Mutex(client, "x", ttl=30).acquire(timeout=0.1)
    await blocker
    # The clean-up runs in the background, so that the timeout answers on time; it
    # ends within a few round trips, and nothing stays held for the 30 s TTL.
    for _ in range(50):
        if not await client.exists(owner_key("x")):
            break
        await asyncio.sleep(0.02)
    assert await client.exists(owner_key("x")) == 0


async def test_a_task_sharing_the_object_cannot_release_a_bodys_lease(
    client: redis.Redis,
) -> None:
    lock = Mutex(client, "x", ttl=5, timeout=0.1)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def body() -> None:
        async with lock:
            entered.set()
            await leave.wait()

    holder = asyncio.create_task(body())
    await entered.wait()

    async def other() -> None:
        assert not await lock.acquire()  # times out: the body holds the name
        assert not lock.owned
        with pytest.raises(LockNotOwned):
            await lock.release()

    await asyncio.create_task(other())
    assert await client.exists(owner_key("x")) == 1  # still the body's
    leave.set()
    await holder


async def test_a_lease_taken_by_a_finished_task_is_released_from_another(
    client: redis.Redis,
) -> None:
    lock = Mutex(client, "x", ttl=5)
    assert await asyncio.create_task(lock.acquire())
    assert (
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(asyncio.sleep(0))), 1) is None
    )
    assert lock.owned
    await lock.release()
    assert await client.exists(owner_key("x")) == 0


async def test_a_body_looping_on_wait_for_is_still_stopped_on_loss(client: redis.Redis) -> None:
    # asyncio.wait_for on Python 3.11 can drop a cancellation that lands as its inner
    # call completes; the loss must reach the body all the same, every time.
    lost_at: list[float] = []
    for _ in range(20):
        lost_at.clear()
        with pytest.raises(LockLost):
            lock = Mutex(
                client,
                "x",
                ttl=0.03,
                auto_extend=False,
                on_lost=lambda _: lost_at.append(time.monotonic()),
            )
            async with lock:
                give_up = time.monotonic() + 2
                while time.monotonic() < give_up:
                    await asyncio.wait_for(asyncio.sleep(0.0002), 1)
        assert time.monotonic() - lost_at[0] < 0.2


async def test_a_forgotten_lease_stops_being_extended_and_says_so(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def forget() -> None:
        lock = Mutex(client, "forgotten", ttl=0.5)
        assert await lock.acquire()
        raise RuntimeError("the task fails before it releases")

    task = asyncio.create_task(forget())
    await asyncio.wait([task])
    assert isinstance(task.exception(), RuntimeError)
    del task  # the lease and its lock object are now garbage
    with pytest.warns(ResourceWarning, match="'forgotten' was acquired and never released"):
        gc.collect()
    assert "'forgotten' was acquired and never released" in caplog.text
    await asyncio.sleep(1.0)  # two TTLs: no watchdog extends it any more
    assert await client.exists(owner_key("forgotten")) == 0


async def test_an_unreleased_lease_still_reachable_is_still_extended(client: redis.Redis) -> None:
    lock = Mutex(client, "kept", ttl=0.5)

    async def keep() -> None:
        assert await lock.acquire()

    await asyncio.create_task(keep())  # its task is done; the lock object still has the lease
    gc.collect()
    await asyncio.sleep(1.0)
    assert await client.exists(owner_key("kept")) == 1
    await lock.release()


async def test_a_task_acquiring_again_and_again_keeps_one_holding(client: redis.Redis) -> None:
    lock = Mutex(client, "loop")
    for _ in range(50):
        assert await lock.acquire(blocking=False)
        await lock.release()
    assert await lock.acquire(blocking=False)
    task = asyncio.current_task()
    assert task is not None
    assert len(lock_module._held[task]) == 1  # ended holdings are dropped as it goes
    await lock.release()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
async def test_a_timeout_is_never_shorter_than_asked(redis_url: str, loop_kind: str) -> None:
    # uvloop's clock runs up to a millisecond behind time.monotonic(), and its timers
    # have millisecond granularity: the wait must still last at least its timeout.
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop

    async def waits() -> list[float]:
        client = redis.Redis.from_url(redis_url)
        holder = Mutex(client, "short", ttl=30)
        assert await holder.acquire()
        try:
            shortfalls = []
            for _ in range(30):
                started = time.monotonic()
                assert not await Mutex(client, "short").acquire(timeout=0.02)
                shortfalls.append(0.02 - (time.monotonic() - started))
            return shortfalls
        finally:
            await holder.release()
            await client.aclose()

    def run() -> list[float]:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(waits())

    shortfalls = await asyncio.to_thread(run)
    assert max(shortfalls) <= 0, max(shortfalls)
