"""Each Lua script, called directly against the real server; and how a client's own faults
are reported."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from asynclock import Mutex, Semaphore, _scripts
from asynclock._names import PLACE_MS, NamedLocks, fence_key, line_keys, owner_key, tombstone_key
from asynclock._resource import Successor

P = "asynclock:"
RELEASE_KEYS = NamedLocks(P, ("a",)).keys


async def test_acquire_sets_token_with_expiry_and_returns_a_fence(client: redis.Redis) -> None:
    before_us = int(time.time() * 1_000_000)
    keys = NamedLocks(P, ("a",)).keys
    reply = await _scripts.ACQUIRE(client, keys, ("tok", 5000))
    assert reply[0] == 1
    assert await client.get(owner_key(P, "a")) == b"tok"
    assert 4000 < await client.pttl(owner_key(P, "a")) <= 5000
    # A new counter starts from the server clock in microseconds.
    assert reply[1] > before_us - 10_000_000
    # The fence outlives any lease: it expires only after a day without an acquire.
    assert 86_000 < await client.ttl(fence_key(P, "a")) <= 86_400


async def test_acquire_refuses_another_token_and_reports_the_holders_ttl(
    client: redis.Redis,
) -> None:
    keys = NamedLocks(P, ("a",)).keys
    await _scripts.ACQUIRE(client, keys, ("one", 3000))
    reply = await _scripts.ACQUIRE(client, keys, ("two", 3000))
    assert reply[0] == 0
    assert 2000 < reply[1] <= 3000
    assert await client.get(owner_key(P, "a")) == b"one"


async def test_acquire_again_with_the_same_token_returns_the_same_fence(
    client: redis.Redis,
) -> None:
    keys = NamedLocks(P, ("a",)).keys
    first = await _scripts.ACQUIRE(client, keys, ("tok", 1000))
    again = await _scripts.ACQUIRE(client, keys, ("tok", 9000))
    assert again == first
    assert await client.pttl(owner_key(P, "a")) > 8000


async def test_fences_increase_across_holders(client: redis.Redis) -> None:
    keys = NamedLocks(P, ("a",)).keys
    fences = []
    for n in range(5):
        reply = await _scripts.ACQUIRE(client, keys, (f"t{n}", 1000))
        fences.append(reply[1])
        assert await _scripts.RELEASE(client, RELEASE_KEYS, (f"t{n}", 1000)) == [1]
    assert fences == sorted(set(fences))


async def test_fences_keep_increasing_when_the_server_lost_its_data(client: redis.Redis) -> None:
    keys = NamedLocks(P, ("a",)).keys
    before = (await _scripts.ACQUIRE(client, keys, ("t1", 1000)))[1]
    await client.flushdb()  # what a restart without persistence does
    after = (await _scripts.ACQUIRE(client, keys, ("t2", 1000)))[1]
    assert after > before


async def test_fences_keep_increasing_when_the_counter_went_back(client: redis.Redis) -> None:
    keys = NamedLocks(P, ("a",)).keys
    before = (await _scripts.ACQUIRE(client, keys, ("t1", 1000)))[1]
    await _scripts.RELEASE(client, RELEASE_KEYS, ("t1", 1000))
    # A replica promoted before it received the latest increments.
    await client.set(fence_key(P, "a"), 5)
    after = (await _scripts.ACQUIRE(client, keys, ("t2", 1000)))[1]
    assert after > before


async def test_a_resent_release_still_counts_as_released(client: redis.Redis) -> None:
    keys = NamedLocks(P, ("a",)).keys
    await _scripts.ACQUIRE(client, keys, ("tok", 5000))
    assert await _scripts.RELEASE(client, RELEASE_KEYS, ("tok", 1000)) == [1]
    assert await _scripts.RELEASE(client, RELEASE_KEYS, ("tok", 1000)) == [1]  # the same, resent
    assert await _scripts.RELEASE(client, RELEASE_KEYS, ("other", 1000)) == [0]
    assert await client.exists(owner_key(P, "a")) == 0
    assert 0 < await client.pttl(tombstone_key(P, "a")) <= 1000


async def test_acquire_over_several_names_is_all_or_nothing(client: redis.Redis) -> None:
    ab = NamedLocks(P, ("a", "b"))
    b = NamedLocks(P, ("b",))
    assert (await b.acquire(client, "other", 5000)).acquired
    grant = await ab.acquire(client, "mine", 5000)
    assert not grant.acquired
    assert await client.exists(owner_key(P, "a")) == 0  # nothing taken partially
    await b.release(client, "other")
    grant = await ab.acquire(client, "mine", 5000)
    assert grant.acquired
    assert len(grant.fencing_tokens) == 2


async def test_extend_only_with_the_holders_token(client: redis.Redis) -> None:
    await client.set(owner_key(P, "a"), "tok", px=1000)
    assert await _scripts.EXTEND(client, (owner_key(P, "a"),), ("other", 9000)) == 0
    assert await client.pttl(owner_key(P, "a")) <= 1000
    assert await _scripts.EXTEND(client, (owner_key(P, "a"),), ("tok", 9000)) == 1
    assert await client.pttl(owner_key(P, "a")) > 8000


async def test_extend_never_recreates_an_expired_key(client: redis.Redis) -> None:
    assert await _scripts.EXTEND(client, (owner_key(P, "a"),), ("tok", 9000)) == 0
    assert await client.exists(owner_key(P, "a")) == 0


async def test_extend_over_several_names_changes_nothing_unless_all_are_ours(
    client: redis.Redis,
) -> None:
    await client.set(owner_key(P, "a"), "tok", px=1000)
    await client.set(owner_key(P, "b"), "other", px=1000)
    keys = (owner_key(P, "a"), owner_key(P, "b"))
    assert await _scripts.EXTEND(client, keys, ("tok", 9000)) == 0
    assert await client.pttl(owner_key(P, "a")) <= 1000


async def test_release_deletes_only_our_keys(client: redis.Redis) -> None:
    await client.set(owner_key(P, "a"), "tok", px=5000)
    await client.set(owner_key(P, "b"), "other", px=5000)
    keys = NamedLocks(P, ("a", "b")).keys
    assert await _scripts.RELEASE(client, keys, ("tok", 1000)) == [1]
    assert await client.exists(owner_key(P, "a")) == 0
    assert await client.get(owner_key(P, "b")) == b"other"
    assert await _scripts.RELEASE(client, keys, ("stranger", 1000)) == [0]


async def test_scripts_reload_after_the_server_forgot_them(client: redis.Redis) -> None:
    await client.script_flush()
    keys = NamedLocks(P, ("a",)).keys
    assert (await _scripts.ACQUIRE(client, keys, ("tok", 1000)))[0] == 1
    assert await client.script_exists(_scripts.ACQUIRE.sha) == [True]


async def test_a_refused_waiter_stands_in_line_and_the_release_names_the_first(
    client: redis.Redis,
) -> None:
    lock = NamedLocks(P, ("a",))
    assert (await lock.acquire(client, "holder", 5000)).acquired
    for waiter in ("p1", "p2", "p3"):
        assert not (await lock.acquire(client, f"tok-{waiter}", 5000, waiter)).acquired
    # A refused try again keeps the place: p1 is still first.
    assert not (await lock.acquire(client, "tok-p1", 5000, "p1")).acquired
    line, alive = line_keys(P, "a")
    assert await client.zrange(line, 0, -1) == [b"p1", b"p2", b"p3"]
    assert 0 < await client.pttl(line) <= PLACE_MS
    pubsub = client.pubsub()
    await pubsub.subscribe(owner_key(P, "a"))
    assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
    assert await lock.release(client, "holder")
    assert (await pubsub.get_message(timeout=2))["data"] == b"p1"
    # p1 takes it with more of its coroutines waiting: it goes to the back.
    assert (await lock.acquire(client, "tok-p1", 5000, "p1", "back")).acquired
    assert await client.zrange(line, 0, -1) == [b"p2", b"p3", b"p1"]
    assert await lock.release(client, "tok-p1")
    assert (await pubsub.get_message(timeout=2))["data"] == b"p2"
    # p2 takes it and nobody else of its own waits: it leaves the line.
    assert (await lock.acquire(client, "tok-p2", 5000, "p2", "leave")).acquired
    assert await client.zrange(line, 0, -1) == [b"p3", b"p1"]
    # p3 crashed: once its place lapses, the release names the next one.
    await client.zadd(alive, {"p3": 0})
    assert await lock.release(client, "tok-p2")
    assert (await pubsub.get_message(timeout=2))["data"] == b"p1"
    assert await client.zrange(line, 0, -1) == [b"p1"]
    await lock.leave_line(client, "p1")
    assert await client.exists(line, alive) == 0  # an empty line is no key at all
    await pubsub.aclose()


async def test_moving_back_alone_in_line_writes_nothing_until_the_place_is_half_gone(
    client: redis.Redis,
) -> None:
    lock = NamedLocks(P, ("a",))
    line, alive = line_keys(P, "a")
    assert (await lock.acquire(client, "holder", 5000)).acquired
    assert not (await lock.acquire(client, "tok-p1", 5000, "p1")).acquired
    assert await lock.release(client, "holder")
    placed = await client.zscore(line, "p1")
    lapse = await client.zscore(alive, "p1")
    # Alone in line, its place fresh: the move to the back would change nothing.
    await client.config_resetstat()
    assert (await lock.acquire(client, "tok-p1", 5000, "p1", "back")).acquired
    assert "cmdstat_zadd" not in await client.info("commandstats")
    assert (await client.zscore(line, "p1"), await client.zscore(alive, "p1")) == (placed, lapse)
    assert await lock.release(client, "tok-p1")
    # Its place half gone: renewed, line and all.
    await client.zadd(alive, {"p1": int(time.time() * 1000) + PLACE_MS // 2 - 100})
    assert (await lock.acquire(client, "tok-p1b", 5000, "p1", "back")).acquired
    assert await client.zscore(alive, "p1") > lapse
    assert await client.pttl(line) > PLACE_MS - 1000
    assert await lock.release(client, "tok-p1b")
    # Another process in line: p1 goes behind it.
    assert (await lock.acquire(client, "holder2", 5000)).acquired
    assert not (await lock.acquire(client, "tok-p2", 5000, "p2")).acquired
    assert await lock.release(client, "holder2")
    assert (await lock.acquire(client, "tok-p1c", 5000, "p1", "back")).acquired
    assert await client.zrange(line, 0, -1) == [b"p2", b"p1"]


async def test_the_line_decides_whom_to_wake_never_who_may_take(client: redis.Redis) -> None:
    lock = NamedLocks(P, ("a",))
    assert (await lock.acquire(client, "holder", 5000)).acquired
    assert not (await lock.acquire(client, "tok-p1", 5000, "p1")).acquired
    assert await lock.release(client, "holder")
    # Someone not in line (a non-blocking try) may take the free lock all the same.
    assert (await lock.acquire(client, "newcomer", 5000)).acquired


async def test_a_release_with_nobody_in_line_publishes_nothing_and_makes_no_line(
    client: redis.Redis,
) -> None:
    lock = NamedLocks(P, ("a",))
    await client.config_resetstat()
    assert (await lock.acquire(client, "tok", 5000, "p1")).acquired
    assert await lock.release(client, "tok")
    stats = await client.info("commandstats")
    assert "cmdstat_publish" not in stats  # nobody waits for a notification
    assert await client.exists(*line_keys(P, "a")) == 0


async def test_a_release_hands_over_to_a_successor_unless_another_process_goes_first(
    client: redis.Redis,
) -> None:
    lock = NamedLocks(P, ("a",))
    line, _ = line_keys(P, "a")
    assert (await lock.acquire(client, "mine", 5000, "p1")).acquired
    fence = int(await client.get(fence_key(P, "a")))
    # Nobody else in line: the lock goes straight to the successor, with a new fence.
    result = await lock.hand_over(client, "mine", Successor("next", 5000, "p1", "back"))
    assert result.released
    assert result.fencing_tokens is not None
    assert result.fencing_tokens[0] > fence
    assert await client.get(owner_key(P, "a")) == b"next"
    assert await client.zrange(line, 0, -1) == [b"p1"]  # more of p1 wait: in line
    # Another process stands first: no hand-over, it is woken, p1 goes to the back.
    assert not (await lock.acquire(client, "theirs", 5000, "p2")).acquired
    await client.zadd(line, {"p2": 0})  # p2 arrived first
    pubsub = client.pubsub()
    await pubsub.subscribe(owner_key(P, "a"))
    assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
    result = await lock.hand_over(client, "next", Successor("after", 5000, "p1", "back"))
    assert result.released
    assert result.fencing_tokens is None
    assert await client.exists(owner_key(P, "a")) == 0
    assert (await pubsub.get_message(timeout=2))["data"] == b"p2"
    assert await client.zrange(line, 0, -1) == [b"p2", b"p1"]
    # Unless the process may jump the line (a bounded run of hand-overs inside it).
    assert (await lock.acquire(client, "again", 5000)).acquired
    jump = Successor("jumper", 5000, "p1", "back", jump_line=True)
    assert (await lock.hand_over(client, "again", jump)).fencing_tokens is not None
    assert await client.get(owner_key(P, "a")) == b"jumper"
    await pubsub.aclose()


async def test_a_hand_over_first_in_line_reads_its_place_once(client: redis.Redis) -> None:
    # The busy process's every section: it is first in line (read to see whose turn
    # it is) and keeps its place at the back; its place's lapse is read once.
    lock = NamedLocks(P, ("a",))
    line, alive = line_keys(P, "a")
    assert (await lock.acquire(client, "mine", 5000, "p1", "back")).acquired
    await lock.hand_over(client, "mine", Successor("next", 5000, "p1", "back"))
    assert await client.zrange(line, 0, -1) == [b"p1"]
    lapse = await client.zscore(alive, "p1")
    await client.config_resetstat()
    result = await lock.hand_over(client, "next", Successor("after", 5000, "p1", "back"))
    assert result.fencing_tokens is not None
    stats = await client.info("commandstats")
    assert stats["cmdstat_zrange"]["calls"] == 1  # whose turn it is
    assert stats["cmdstat_zscore"]["calls"] == 1
    assert "cmdstat_zadd" not in stats  # alone in line, its place fresh: kept
    assert await client.zscore(alive, "p1") == lapse
    # Its place half gone: the same read shows it, and it is renewed.
    await client.zadd(alive, {"p1": int(time.time() * 1000) + PLACE_MS // 2 - 100})
    result = await lock.hand_over(client, "after", Successor("last", 5000, "p1", "back"))
    assert result.fencing_tokens is not None
    assert await client.zscore(alive, "p1") > lapse


async def test_a_successor_given_up_gets_nothing(client: redis.Redis) -> None:
    lock = NamedLocks(P, ("a",))
    assert (await lock.acquire(client, "mine", 5000)).acquired
    assert not await lock.release(client, "gone")  # its clean-up came first: a tombstone
    result = await lock.hand_over(client, "mine", Successor("gone", 5000, "p1"))
    assert result.released
    assert result.fencing_tokens is None
    assert await client.exists(owner_key(P, "a")) == 0


async def test_every_key_left_after_many_distinct_names_expires(client: redis.Redis) -> None:
    # Names made from ids (report:{user_id}) must not leave a key each for ever.
    for n in range(200):
        async with Mutex(client, f"report:{n}", ttl=5):
            pass
        async with Semaphore(client, f"quota:{n}", limit=2, ttl=5):
            pass
    left = [key async for key in client.scan_iter(match="asynclock:*", count=1000)]
    assert len(left) >= 400  # fences and tombstones of both primitives
    lifetimes = [await client.pttl(key) for key in left]
    assert all(lifetime > 0 for lifetime in lifetimes)  # none without an expiry
    day = 86_400_000
    assert max(lifetimes) <= day  # a day at most: the fence counters


async def test_a_busy_name_keeps_one_bounded_tombstone(client: redis.Redis) -> None:
    # 2,000 releases a second must not leave 60,000 keys: one tombstone per name,
    # holding the 64 most recent tokens.
    mutex_names = NamedLocks(P, ("busy",))
    for n in range(300):
        token = f"{n:032x}"  # as long as the library's tokens
        assert (await mutex_names.acquire(client, token, 5000)).acquired
        assert await mutex_names.release(client, token)
    for _ in range(300):
        async with Semaphore(client, "busy-sem", limit=3, ttl=5):
            pass
    left = sorted([key.decode() async for key in client.scan_iter(match="asynclock:*")])
    assert left == [
        fence_key(P, "busy"),
        tombstone_key(P, "busy"),
        "asynclock:semaphore:{busy-sem}:fence",
        "asynclock:semaphore:{busy-sem}:limit",  # until the last holder's TTL
        "asynclock:semaphore:{busy-sem}:releases",
    ]
    for key in left:
        if key.endswith(":releases"):
            # At least the 64 latest, cut back to them once past 96.
            assert 64 <= await client.llen(key) <= 96
            assert 0 < await client.pttl(key) <= 30_000
    tokens = await client.lrange(tombstone_key(P, "busy"), 0, -1)
    # 300 releases: cut back to 64 at the 97th, 130th, ... 295th; 5 more since.
    assert tokens == [f"{n:032x}".encode() for n in range(299, 230, -1)]  # newest first


async def test_a_tombstone_refuses_a_late_acquire_for_at_least_64_releases(
    client: redis.Redis,
) -> None:
    lock = NamedLocks(P, ("late",))
    late = "f" * 32  # as long as the library's tokens
    assert not await lock.release(client, late)  # the clean-up of an acquire in flight
    for n in range(96):
        if n >= 63:
            assert not (await lock.acquire(client, late, 5000)).acquired  # still refused
        assert (await lock.acquire(client, f"{n:032x}", 5000)).acquired
        assert await lock.release(client, f"{n:032x}")
    # 96 newer releases: the tombstone was cut back to the 64 latest, the token
    # dropped out, and a late acquire takes the name (it then lapses within its TTL,
    # nobody extending it).
    assert await client.llen(tombstone_key(P, "late")) == 64
    assert (await lock.acquire(client, late, 5000)).acquired


async def test_a_tombstone_is_no_other_names_key(client: redis.Redis) -> None:
    # `{t}job:releases` is a name like any other: releases of `{t}job` leave it alone.
    job, other = NamedLocks(P, ("{t}job",)), NamedLocks(P, ("{t}job:releases",))
    assert (await other.acquire(client, "theirs", 5000)).acquired
    assert (await job.acquire(client, "mine", 5000)).acquired
    assert await job.release(client, "mine")
    assert await client.get(owner_key(P, "{t}job:releases")) == b"theirs"
    assert await other.release(client, "theirs")
    assert await job.release(client, "mine")  # resent: the tombstone still counts it


async def test_a_tombstone_matches_whole_tokens_only(client: redis.Redis) -> None:
    lock = NamedLocks(P, ("whole",))
    for token in ("xab", "abx", "ab"):
        assert not await lock.release(client, token)  # clean-ups: all three remembered
    assert not (await lock.acquire(client, "ab", 5000)).acquired  # a whole token
    for part in ("a", "b", "xa", "bx"):  # parts of tokens are not tokens
        assert (await lock.acquire(client, part, 5000)).acquired
        assert await lock.release(client, part)


class _FaultyCluster:
    """A cluster client (no connection pool of its own) whose command fails with
    ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def execute_command(self, *command: object) -> object:
        raise self.error


@pytest.mark.parametrize(
    "fault",
    [
        RuntimeError("dictionary changed size during iteration"),  # redis-py 5, failover
        RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed"),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ],
)
async def test_a_clients_fault_for_a_lost_connection_is_reported_as_one(
    fault: Exception,
) -> None:
    with pytest.raises(RedisConnectionError, match="Error while writing to the server"):
        await _scripts.run_command(_FaultyCluster(fault), "GET", "a")


@pytest.mark.parametrize(
    "fault", [RuntimeError("a bug of ours"), AttributeError("'Lease' has no attribute 'x'")]
)
async def test_any_other_fault_escapes_as_it_is(fault: Exception) -> None:
    with pytest.raises(type(fault), match=str(fault)):
        await _scripts.run_command(_FaultyCluster(fault), "GET", "a")


async def test_a_script_call_leaves_timeouts_under_maintenance_to_redis_py(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        await client.ping()
        conn = client.connection_pool._available_connections[0]
        seen: list[float | None] = []
        read_response = conn.read_response

        async def reading(*args: Any, **kwargs: Any) -> Any:
            seen.append(conn.socket_timeout)
            if len(seen) == 3:
                conn.socket_timeout = 10  # relaxed by redis-py meanwhile (a maintenance)
            return await read_response(*args, **kwargs)

        conn.read_response = reading
        # Out of maintenance: one timer of our own for the exchange, the connection's
        # timeout lifted meanwhile and given back after.
        assert await _scripts.run_command(client, "PING") == b"PONG"
        # In maintenance (redis-py 8 relaxes timeouts then): redis-py's own timers.
        conn.maintenance_state = SimpleNamespace(name="MAINTENANCE")
        assert await _scripts.run_command(client, "PING") == b"PONG"
        conn.maintenance_state = SimpleNamespace(name="NONE")
        assert await _scripts.run_command(client, "PING") == b"PONG"
        assert seen == [None, 2, None]
        assert conn.socket_timeout == 10  # what redis-py set during the exchange stays
    finally:
        await client.aclose()


@pytest.mark.parametrize(("failures", "replies"), [(0, True), (2, True), (3, False)])
async def test_a_command_is_tried_as_often_as_the_clients_retry_policy_says(
    redis_url: str, failures: int, replies: bool
) -> None:
    # The first try is made outside the policy's loop, and handed to it on failure:
    # the policy still makes 1 + 2 tries in all, disconnecting after each failure.
    client = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 2))
    try:
        await client.ping()
        conn = client.connection_pool._available_connections[0]
        sends: list[int] = []
        send = conn.send_packed_command

        async def failing(packed: Any, *args: Any, **kwargs: Any) -> Any:
            if b"PING" in b"".join(packed) if isinstance(packed, list) else b"PING" in packed:
                sends.append(len(sends))  # not the handshake of a reconnection
                if len(sends) <= failures:
                    raise RedisConnectionError("lost")
            return await send(packed, *args, **kwargs)

        disconnects: list[int] = []
        disconnect = conn.disconnect

        async def counted(*args: Any, **kwargs: Any) -> Any:
            disconnects.append(1)
            return await disconnect(*args, **kwargs)

        conn.send_packed_command, conn.disconnect = failing, counted
        if replies:
            assert await _scripts.run_command(client, "PING") == b"PONG"
        else:
            with pytest.raises(RedisConnectionError) as caught:
                await _scripts.run_command(client, "PING")
            assert caught.value.__context__ is None  # not chained to the first try's
        assert len(sends) == min(failures + 1, 3)
        assert len(disconnects) == min(failures, 3)
    finally:
        await client.aclose()
