"""Wake-up by notification: releases publish, waiters wake at once, one connection serves all."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import LinearBackoff, Mutex, Semaphore
from asynclock import _acquire as lease_module
from asynclock import _queue as queue_module
from asynclock._names import NamedLocks, line_keys
from asynclock._notify import Notifier
from asynclock._resource import Successor

from .conftest import owner_key

SLOW_POLL = LinearBackoff(delay=5.0, jitter=0)  # polling alone would take 5 s


async def pubsub_connections(client: redis.Redis) -> int:
    """How many connections of the server are in pub/sub mode."""
    return sum(1 for entry in await client.client_list() if int(entry.get("sub", 0)) > 0)


async def channels_after_sweep(client: redis.Redis) -> list[bytes | str]:
    """Our subscribed channels, once the reader's sweep had time to drop unused ones."""
    channels: list[bytes | str] = []
    for _ in range(60):  # the sweep runs every second
        channels = await client.pubsub_channels("asynclock:*")
        if not channels:
            break
        await asyncio.sleep(0.05)
    return channels


async def test_a_release_wakes_a_waiter_at_once(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)  # subscribed and waiting
    released = time.monotonic()
    await holder.release()
    assert await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released < 0.2  # a notification, not a 5 s poll


async def test_a_released_permit_wakes_a_semaphore_waiter(client: redis.Redis) -> None:
    holders = [Semaphore(client, "q", limit=2, ttl=30) for _ in range(2)]
    for holder in holders:
        await holder.acquire()
    waiter = asyncio.create_task(Semaphore(client, "q", limit=2, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    released = time.monotonic()
    await holders[0].release()
    assert await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released < 0.2
    await holders[1].release()


async def test_one_connection_serves_every_waiter_and_channels_are_dropped(
    client: redis.Redis,
) -> None:
    names = [f"n{n}" for n in range(20)]
    holders = [Mutex(client, name, ttl=30) for name in names]
    for holder in holders:
        await holder.acquire()

    async def waiter(name: str) -> None:
        async with Mutex(client, name, ttl=30, retry=SLOW_POLL):
            pass  # and hand over to the next

    waiters = [asyncio.create_task(waiter(name)) for name in names for _ in range(10)]
    await asyncio.sleep(0.3)
    assert await pubsub_connections(client) == 1  # 200 waiters, one subscriber
    assert len(await client.pubsub_channels("asynclock:*")) == len(names)
    for holder in holders:
        await holder.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 10)  # notifications only: no 5 s poll
    # Nobody waits any more: the reader's sweep unsubscribes within about a second.
    assert await channels_after_sweep(client) == []


async def test_a_lost_notification_costs_a_recheck_not_a_hang(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30).acquire())  # default retry
    await asyncio.sleep(0.2)
    await client.delete(owner_key("x"))  # freed without a release: no notification
    freed = time.monotonic()
    assert await asyncio.wait_for(waiter, 3)
    assert time.monotonic() - freed < 1.0  # the fallback re-check, every 0.25 s


async def test_waiters_in_one_process_get_the_lock_in_arrival_order(client: redis.Redis) -> None:
    lock_name = "fifo"
    holder = Mutex(client, lock_name, ttl=30)
    await holder.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with Mutex(client, lock_name, ttl=30, timeout=20):
            order.append(n)
            await asyncio.sleep(0.005)

    tasks = []
    for n in range(8):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0.02)  # arrive one after another
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_a_cancelled_waiter_unsubscribes(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    assert await client.pubsub_channels("asynclock:*") == [owner_key("x").encode()]
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert await channels_after_sweep(client) == []
    await holder.release()


async def test_waiters_arriving_during_a_first_try_keep_their_order(client: redis.Redis) -> None:
    holder = Mutex(client, "fifo2", ttl=30)
    await holder.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with Mutex(client, "fifo2", ttl=30, timeout=20):
            order.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0)  # the next arrives while the first try is in flight
    await asyncio.sleep(0.2)
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == list(range(5))


async def test_a_pool_of_one_connection_still_waits(redis_url: str) -> None:
    single = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(redis_url, max_connections=1)
    )
    holder = Mutex(single, "one", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(single, "one", ttl=30).acquire())
    await asyncio.sleep(0.2)
    await holder.release()
    assert await asyncio.wait_for(waiter, 5)  # by polling: no connection for a subscriber
    await single.aclose()


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fallback re-check within a test: only a notification can wake a waiter."""
    monkeypatch.setattr(lease_module, "_NOTIFIED_RECHECK", 30.0)


@pytest.mark.usefixtures("no_fallback")
@pytest.mark.parametrize("released_by", ["this process", "another process"])
async def test_a_release_between_a_failed_try_and_the_subscription_is_not_missed(
    client: redis.Redis,
    make_client: Callable[..., redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
    released_by: str,
) -> None:
    # From another process (its own client), no hand-over inside the waiter's process
    # can rescue a waiter that checks before it has subscribed.
    holder = Mutex(client if released_by == "this process" else make_client(), "race", ttl=30)
    await holder.acquire()
    lease = holder.lease
    assert lease is not None
    watch = Notifier.watch

    async def release_first(
        self: Notifier, channels: tuple[str, ...], event: asyncio.Event
    ) -> None:
        if lease.owned:
            await lease.release()  # published before anyone listens
        await watch(self, channels, event)

    monkeypatch.setattr(Notifier, "watch", release_first)
    # The re-check after subscribing finds the lock free; no 30 s fallback needed.
    assert await asyncio.wait_for(Mutex(client, "race", ttl=30).acquire(), 5)


@pytest.mark.usefixtures("no_fallback")
async def test_the_waiters_recheck_when_the_notification_connection_comes_back(
    client: redis.Redis,
) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    await client.client_kill_filter(_type="pubsub")
    await holder.release()  # published while the subscriber is gone
    # redis-py reconnects and resubscribes; the confirmation wakes the waiter.
    assert await asyncio.wait_for(waiter, 5)


async def test_processes_are_woken_in_their_order_of_arrival(redis_url: str) -> None:
    # Separate clients stand for separate processes: each has its own notifier.
    clients = [redis.Redis.from_url(redis_url) for _ in range(4)]
    holder = Mutex(clients[0], "line", ttl=30)
    await holder.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with Mutex(clients[n], "line", ttl=30, timeout=20):
            order.append(n)
            await asyncio.sleep(0.01)

    tasks = []
    for n in (3, 1, 2):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0.1)  # refused, and so in line, before the next arrives
    line, _ = line_keys("asynclock:", "line")
    assert len(await clients[0].zrange(line, 0, -1)) == 3
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [3, 1, 2]
    await asyncio.sleep(0.1)  # the last waiter left the line in the background
    assert await clients[0].exists(line) == 0
    for each in clients:
        await each.aclose()


async def test_a_frozen_process_first_in_line_delays_the_others_by_a_recheck_only(
    client: redis.Redis,
) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "x", ttl=30, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.2)
    # A process that froze while first in line: its place has not lapsed yet.
    line, alive = line_keys("asynclock:", "x")
    await client.zadd(line, {"frozen": 0})
    await client.zadd(alive, {"frozen": 2**52})
    released = time.monotonic()
    await holder.release()  # wakes "frozen", which does not answer
    assert await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - released < 2.0  # the 0.25 s fallback, not the 5 s poll


async def test_a_waiter_that_gives_up_leaves_the_line(client: redis.Redis) -> None:
    holder = Mutex(client, "x", ttl=30)
    await holder.acquire()
    assert not await Mutex(client, "x", ttl=30).acquire(timeout=0.3)
    line, alive = line_keys("asynclock:", "x")
    for _ in range(100):
        if not await client.exists(line, alive):
            break
        await asyncio.sleep(0.01)
    assert await client.exists(line, alive) == 0
    await holder.release()


async def test_thousands_of_waiters_share_one_subscriber_and_few_connections(
    redis_url: str, client: redis.Redis
) -> None:
    waiting_client = redis.Redis.from_url(redis_url)
    names = [f"many{n}" for n in range(50)]
    holders = [Mutex(client, name, ttl=30) for name in names]
    for holder in holders:
        await holder.acquire()
    waiters = [
        asyncio.create_task(Mutex(waiting_client, name, ttl=30, timeout=30).acquire())
        for name in names
        for _ in range(200)
    ]  # 10,000 waiting coroutines
    # Until every waiter has its place and every name its subscription: starting
    # 10,000 tasks takes a while on a loaded machine, so a fixed pause would not do.
    probes = [Mutex(waiting_client, name) for name in names]
    for _ in range(1500):  # 30 s at most
        settled = all(probe.statistics().waiting == 200 for probe in probes)
        if settled and len(await client.pubsub_channels("asynclock:*")) == len(names):
            break
        await asyncio.sleep(0.02)
    assert await pubsub_connections(client) == 1
    assert len(await client.pubsub_channels("asynclock:*")) == len(names)  # not 10,000
    # One head per name talks to Redis: connections grow with names, not waiters.
    in_use = waiting_client.connection_pool._in_use_connections
    assert len(in_use) <= len(names) + 1
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for holder in holders:
        await holder.release()
    await waiting_client.aclose()


async def test_a_busy_lock_stays_subscribed_across_hand_overs(client: redis.Redis) -> None:
    await client.config_resetstat()
    holder = Mutex(client, "busy", ttl=30)
    for _ in range(10):  # rounds in which the process's queue fills and empties
        await holder.acquire()
        locks = [Mutex(client, "busy", ttl=30, timeout=10) for _ in range(2)]
        waiters = [asyncio.create_task(lock.acquire()) for lock in locks]
        await asyncio.sleep(0.03)
        await holder.release()
        for lock, waiter in zip(locks, waiters, strict=True):
            assert await waiter
            await lock.release()  # the lease of a finished task, through its object
    stats = await client.info("commandstats")
    # Not a SUBSCRIBE per round: the channel stays until a sweep finds it unused.
    assert stats["cmdstat_subscribe"]["calls"] <= 3


async def test_a_release_hands_the_lock_to_the_next_waiter_of_its_process(
    client: redis.Redis,
) -> None:
    fences: list[int] = []

    async def section() -> None:
        async with Mutex(client, "h", ttl=30, timeout=10) as lease:
            fences.append(lease.fencing_token)
            await asyncio.sleep(0.002)

    await section()  # scripts loaded, fence counter made
    await client.config_resetstat()
    await asyncio.gather(*(section() for _ in range(20)))
    stats = await client.info("commandstats")
    # A release and the next acquire in one script call: about one call per section,
    # where releasing and acquiring apart would take two and more.
    assert stats["cmdstat_evalsha"]["calls"] <= 20 + 4
    assert fences == sorted(set(fences))  # each holder a higher fencing token
    assert await client.exists(owner_key("h")) == 0


async def test_a_successor_cancelled_during_a_hand_over_leaves_nothing_held(
    client: redis.Redis,
) -> None:
    for round_number in range(20):
        holder = Mutex(client, "c", ttl=30)
        await holder.acquire()
        successor = asyncio.create_task(Mutex(client, "c", ttl=30, timeout=10).acquire())
        await asyncio.sleep(0.05)  # the successor waits for the release
        lease = holder.lease
        assert lease is not None
        release = asyncio.create_task(lease.release())
        for _ in range(round_number % 4):
            await asyncio.sleep(0)  # cancel at various moments of the hand-over
        successor.cancel()
        await release
        if (await asyncio.gather(successor, return_exceptions=True))[0] is not True:
            # Cancelled: whatever was handed to it was released by its token.
            for _ in range(100):
                if not await client.exists(owner_key("c")):
                    break
                await asyncio.sleep(0.01)
            assert await client.exists(owner_key("c")) == 0
        else:
            await client.delete(owner_key("c"))  # it won the race and holds it


async def test_a_process_hands_over_inside_itself_only_a_few_times_while_another_waits(
    redis_url: str,
) -> None:
    clients = [redis.Redis.from_url(redis_url) for _ in range(2)]
    order: list[int] = []
    stop = time.monotonic() + 1.0

    async def worker(process: int) -> None:
        while time.monotonic() < stop:
            async with Mutex(clients[process], "turns", ttl=30, timeout=10):
                order.append(process)
                await asyncio.sleep(0.001)

    await asyncio.gather(*(worker(process) for process in (0, 1) for _ in range(5)))
    runs = [len(list(run)) for _, run in itertools.groupby(order)]
    assert len(runs) > 10  # the processes took turns
    # A run of local hand-overs is bounded; the other process's turn comes soon.
    assert max(runs) <= queue_module.LOCAL_RUN + 2
    for each in clients:
        await each.aclose()


async def test_a_waiter_that_gives_up_during_a_slow_hand_over_leaves_nothing_held(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_over = NamedLocks.hand_over

    async def slow_hand_over(self: NamedLocks, client: Any, token: str, to: Successor) -> Any:
        await asyncio.sleep(0.3)  # the command reaches the server late ...
        result = await hand_over(self, client, token, to)
        await asyncio.sleep(1.0)  # ... and its reply comes later still
        return result

    monkeypatch.setattr(NamedLocks, "hand_over", slow_hand_over)
    holder = Mutex(client, "slow", ttl=30)
    await holder.acquire()
    lease = holder.lease
    assert lease is not None
    waiter = asyncio.create_task(Mutex(client, "slow", ttl=30).acquire(timeout=0.45))
    await asyncio.sleep(0.05)  # the waiter was refused and waits for the release
    release = asyncio.create_task(lease.release())
    # The waiter re-checks (refused: the hand-over has not run yet), then gives up
    # after the hand-over gave it the lock: it must release by its token.
    assert await waiter is False
    for _ in range(100):
        if not await client.exists(owner_key("slow")):
            break
        await asyncio.sleep(0.01)
    assert await client.exists(owner_key("slow")) == 0
    await release


async def test_bodies_that_never_yield_do_not_leave_their_waiters_to_the_fallback(
    client: redis.Redis,
) -> None:
    waits: list[float] = []

    async def worker() -> None:
        for _ in range(300):
            asked = time.monotonic()
            async with Mutex(client, "quick", ttl=30, timeout=5):
                waits.append(time.monotonic() - asked)  # and release without yielding

    await asyncio.gather(worker(), worker())
    # Each release wakes the other worker; none waits for the 0.25 s re-check.
    assert sum(wait >= 0.2 for wait in waits) <= 1  # one hiccup of a loaded machine


async def test_a_body_that_never_yields_still_hands_the_lock_over(client: redis.Redis) -> None:
    # The next waiter has its turn but has not run when the release comes: the release
    # lets it offer to take the lock, rather than making it try on its own after.
    locks = [Mutex(client, "quick", ttl=30, timeout=5) for _ in range(4)]

    async def worker(lock: Mutex) -> None:
        for _ in range(50):
            async with lock:
                pass

    await asyncio.gather(*(worker(lock) for lock in locks))
    handed_over = sum(lock.statistics().hand_overs for lock in locks)
    assert handed_over >= 0.9 * (200 - 4)  # all but the few first tries, and hiccups


@pytest.mark.usefixtures("no_fallback")
async def test_a_client_reused_by_a_new_event_loop_still_wakes_its_waiters(redis_url: str) -> None:
    # A CLI tool or a cron script: asyncio.run(...) several times with one module-level
    # client, closed at the end of each run.
    shared = redis.Redis.from_url(redis_url)

    async def one_run() -> float:
        other = redis.Redis.from_url(redis_url)  # another process holds the lock
        holder = Mutex(other, "loops", ttl=30)
        assert await holder.acquire()
        waiter = asyncio.create_task(Mutex(shared, "loops", ttl=30).acquire())
        await asyncio.sleep(0.2)
        released = time.monotonic()
        await holder.release()
        try:
            assert await asyncio.wait_for(waiter, 5)  # no fallback: a notification only
            return time.monotonic() - released
        finally:
            await shared.delete(owner_key("loops"))
            await shared.aclose()
            await other.aclose()

    def run_three_times() -> list[float]:
        return [asyncio.run(one_run()) for _ in range(3)]

    woken_after = await asyncio.to_thread(run_three_times)
    assert all(delay < 1.0 for delay in woken_after), woken_after


async def test_a_background_task_never_leaks_an_exception_to_asyncio(
    client: redis.Redis,
    make_client: Callable[..., redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))

    async def broken(self: NamedLocks, client: Any, waiter: str) -> None:
        raise AttributeError("'NoneType' object has no attribute 'send_packed_command'")

    monkeypatch.setattr(NamedLocks, "leave_line", broken)  # as seen with a frozen server
    holder = Mutex(make_client(), "bg", ttl=30)  # another process holds it
    assert await holder.acquire()
    waiter = asyncio.create_task(Mutex(client, "bg", ttl=30).acquire())
    await asyncio.sleep(0.2)  # refused: the process stands in line
    waiter.cancel()  # the last waiter leaves the line, in the background
    await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    await holder.release()
    assert unhandled == []
    assert "leaving the line of waiters of lock 'bg' failed" in caplog.text
