"""Guards for bugs the rest of the suite let through when they were planted one at a time.

Each test here failed with one realistic bug put into the package and passes without
it (``make mutants`` plants them again): the drift allowance dropped after an
extension, a waiter that checks the lock before it has subscribed (in
``test_notify.py``, released by another process), a notifier that
keeps channels nobody waits on, ``extend_interval`` checked against the whole TTL, a
release without its tombstone, a grant kept although its reply came after the lease's
deadline, fencing tokens that stop increasing when the counter is ahead of the clock,
and an ``async with`` exit that swallows ``LockLost``.
Every test runs against the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import Lease, LockEvent, LockLost, MultiLock, Mutex, Semaphore, _scripts, subscribe
from asynclock._timing import drift_allowance

from .conftest import owner_key


async def until(condition: Callable[[], Any], seconds: float = 5.0) -> None:
    """Poll ``condition()`` (a coroutine function or a plain one) until true."""
    for _ in range(int(seconds / 0.02)):
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


# --- the lease's deadline keeps its drift allowance --------------------------------


async def test_a_manual_extension_keeps_the_drift_allowance(client: redis.Redis) -> None:
    ttl = 10.0
    async with Mutex(client, "drift", ttl=ttl) as lease:
        before = time.monotonic()
        await lease.extend()
        after = time.monotonic()
    # From the extension's send, less the allowance: never the server's full TTL.
    assert before + ttl - drift_allowance(ttl) <= lease.deadline
    assert lease.deadline <= after + ttl - drift_allowance(ttl)


async def test_a_watchdog_extension_keeps_the_drift_allowance(client: redis.Redis) -> None:
    ttl = 1.0
    held: list[Lease] = []
    seen: list[tuple[float, float]] = []

    def on_event(event: LockEvent) -> None:
        if event.event == "lock_extended" and held:
            # Called where the extension is recorded: now is at most a round trip
            # after its send, far less than the 12 ms allowance.
            seen.append((time.monotonic(), held[0].deadline))

    stop = subscribe(on_event)
    try:
        async with Mutex(client, "drift", ttl=ttl, extend_interval=0.2) as lease:
            held.append(lease)
            await until(lambda: len(seen) >= 2)
    finally:
        stop()
    for now, deadline in seen:
        assert deadline <= now + ttl - drift_allowance(ttl)
        assert deadline > now + ttl - drift_allowance(ttl) - 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda client, interval: Mutex(client, "x", ttl=10, extend_interval=interval),
        lambda client, interval: Semaphore(client, "x", limit=2, ttl=10, extend_interval=interval),
        lambda client, interval: MultiLock(client, ["x", "y"], ttl=10, extend_interval=interval),
    ],
    ids=["mutex", "semaphore", "multilock"],
)
async def test_an_extend_interval_must_leave_the_drift_allowance(
    client: redis.Redis, make: Callable[[redis.Redis, float], object]
) -> None:
    """``extend_interval`` must be below ``ttl`` less its drift allowance (10 s: 9.898 s).

    An interval between the two would extend after the client's own deadline: the
    lease would be lost every time, after the first interval.
    """
    for too_long in (9.95, 9.898, 10):
        with pytest.raises(ValueError, match="extend_interval"):
            make(client, too_long)
    make(client, 9.85)  # just below: allowed


# --- the notifier drops what nobody waits on ----------------------------------------


async def test_a_cancelled_waiters_channel_goes_while_another_name_keeps_the_connection(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    waiting_client = make_client()
    holders = [Mutex(client, name, ttl=30) for name in ("keep", "gone")]
    for holder in holders:
        await holder.acquire()
    keep = asyncio.create_task(Mutex(waiting_client, "keep", ttl=30).acquire())
    gone = asyncio.create_task(Mutex(waiting_client, "gone", ttl=30).acquire())

    async def channels() -> set[bytes]:
        return set(await client.pubsub_channels("asynclock:*"))

    both = {owner_key("keep").encode(), owner_key("gone").encode()}
    await until(lambda: channels_are(channels, both))
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    # The reader's sweep unsubscribes within about a second, connection kept.
    await until(lambda: channels_are(channels, {owner_key("keep").encode()}), 5.0)
    assert not keep.done()
    keep.cancel()
    await asyncio.gather(keep, return_exceptions=True)
    for holder in holders:
        await holder.release()


async def channels_are(read: Callable[[], Any], expected: set[bytes]) -> bool:
    """Whether the subscribed channels are exactly ``expected``."""
    return bool(await read() == expected)


# --- a release leaves a tombstone that refuses its own late acquire ------------------


async def test_an_acquire_overtaken_by_its_own_clean_up_takes_nothing(
    client: redis.Redis,
    make_client: Callable[..., redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = Mutex(make_client(), "late", ttl=30)  # another process
    await holder.acquire()
    real = _scripts.run_command
    tries = 0
    held_back: list[asyncio.Task[Any]] = []
    go = asyncio.Event()

    async def evalsha(on: Any, *command: Any) -> Any:
        nonlocal tries
        if on is not client or command[1] != _scripts.ACQUIRE.sha:
            return await real(on, *command)
        tries += 1
        if tries < 2 or held_back:
            return await real(on, *command)

        # The waiter's try after the release travels slowly: it reaches the server
        # only after the waiter was cancelled and its clean-up ran.
        async def slow() -> Any:
            await go.wait()
            return await real(on, *command)

        held_back.append(asyncio.ensure_future(slow()))
        return await asyncio.shield(held_back[0])

    monkeypatch.setattr(_scripts, "run_command", evalsha)
    waiter = asyncio.create_task(Mutex(client, "late", ttl=30).acquire())
    await until(lambda: tries == 1)  # refused once: waiting
    await asyncio.sleep(0.05)
    await holder.release()  # the waiter wakes and tries again
    await until(lambda: held_back)
    waiter.cancel()  # its try is in flight: the clean-up releases by its token
    await asyncio.gather(waiter, return_exceptions=True)
    go.set()  # now the try reaches the server, after its own clean-up
    await asyncio.wait_for(held_back[0], 5)
    monkeypatch.undo()
    assert await client.exists(owner_key("late")) == 0  # refused by the tombstone


# --- fencing tokens increase even when the counter is ahead of the clock ------------


@pytest.mark.parametrize("kind", ["mutex", "semaphore"])
async def test_fencing_tokens_increase_when_the_counter_is_ahead_of_the_clock(
    client: redis.Redis, kind: str
) -> None:
    # A counter ahead of the server clock: restored from elsewhere, or written by a
    # server whose clock ran fast. Each holder must still get a larger token.
    ahead = int(time.time() * 1_000_000) + 10**12
    fence = (
        f"asynclock:fence:{{{kind}}}"
        if kind == "mutex"
        else "asynclock:semaphore:{semaphore}:fence"
    )
    await client.set(fence, ahead)

    def make() -> Mutex | Semaphore:
        if kind == "mutex":
            return Mutex(client, kind, ttl=5)
        return Semaphore(client, kind, limit=2, ttl=5)

    tokens = []
    for _ in range(3):
        async with make() as lease:
            tokens.append(lease.fencing_token)
    assert tokens == [ahead + 1, ahead + 2, ahead + 3]


# --- a grant that comes back too late ----------------------------------------------


async def test_a_grant_that_comes_back_after_its_deadline_is_given_back(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    """An acquire granted after the lease's own deadline has passed is not a hold.

    The server is busy when the acquire arrives, so the grant comes back after the
    deadline measured from the send: the lease may already belong to someone else by
    the server's clock. The client gives the grant back by its token at once, and a
    try without waiting reports the lock as not acquired.
    """
    other = make_client()
    await other.ping()  # connected, so that DEBUG SLEEP starts at once
    await client.ping()
    blocker = asyncio.create_task(other.execute_command("DEBUG", "SLEEP", "0.5"))
    await asyncio.sleep(0.05)
    lock = Mutex(client, "x", ttl=0.2, blocking=False)  # a deadline 0.196 s after the send
    assert not await lock.acquire()  # granted about 0.45 s after the send
    assert not lock.owned
    assert await client.exists(owner_key("x")) == 0  # given back, not left to expire
    await blocker


# --- the exit of async with never swallows a loss -----------------------------------


async def test_a_multilock_lost_while_its_body_runs_raises_lock_lost(
    client: redis.Redis,
) -> None:
    with pytest.raises(LockLost):
        async with MultiLock(client, ["m1", "m2"], ttl=0.6):
            await client.delete(owner_key("m2"))
            await asyncio.sleep(5)


async def test_a_semaphore_lost_at_release_raises_lock_lost(client: redis.Redis) -> None:
    with pytest.raises(LockLost, match="gone at release"):
        async with Semaphore(client, "s", limit=2, ttl=30):
            await client.delete("asynclock:semaphore:{s}:holders")


async def test_a_body_error_after_a_loss_carries_the_loss_as_a_note(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="body") as caught:
        async with Mutex(client, "n", ttl=0.6):
            await client.delete(owner_key("n"))
            try:
                await asyncio.sleep(5)  # cancelled by the loss
            except asyncio.CancelledError:
                raise ValueError("body") from None  # a clean-up of the body's that fails
    notes = getattr(caught.value, "__notes__", [])
    assert any(note.startswith("asynclock: ") and "token was gone" in note for note in notes)


async def test_a_lease_taken_over_during_the_body_raises_lock_lost_at_a_normal_exit(
    client: redis.Redis,
) -> None:
    """The name now holds another token: the release finds it, ``async with`` raises.

    The body ends normally, before any extension could notice; the release must not
    pass over the loss in silence, nor touch the other holder's key.
    """
    with pytest.raises(LockLost, match="gone at release"):
        async with Mutex(client, "x", ttl=30):
            await client.set(owner_key("x"), "another-holder", px=30_000)
    assert await client.get(owner_key("x")) == b"another-holder"


async def test_a_body_that_swallows_the_cancellation_of_a_loss_still_gets_lock_lost(
    client: redis.Redis,
) -> None:
    """A body that catches the cancellation of a loss and ends normally: LockLost all the same.

    The code after ``async with`` must never run as if the lock had been held
    throughout, whatever the body did with the cancellation.
    """
    with pytest.raises(LockLost, match="ran out"):
        async with Mutex(client, "x", ttl=0.2, auto_extend=False):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3)
            # On Python 3.11 the loss is cancelled again until the body leaves.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
