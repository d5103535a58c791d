"""Each Lua script, called directly against the real server."""

from __future__ import annotations

import time

import redis.asyncio as redis

from asynclock import _scripts
from asynclock._names import NamedLocks, fence_key, owner_key

P = "asynclock:"


async def test_acquire_sets_token_with_expiry_and_returns_a_fence(client: redis.Redis) -> None:
    before_us = int(time.time() * 1_000_000)
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    reply = await _scripts.ACQUIRE(client, keys, ("tok", 5000))
    assert reply[0] == 1
    assert await client.get(owner_key(P, "a")) == b"tok"
    assert 4000 < await client.pttl(owner_key(P, "a")) <= 5000
    # A new counter starts from the server clock in microseconds.
    assert reply[1] > before_us - 10_000_000
    assert await client.ttl(fence_key(P, "a")) == -1  # the fence never expires


async def test_acquire_refuses_another_token_and_reports_the_holders_ttl(
    client: redis.Redis,
) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    await _scripts.ACQUIRE(client, keys, ("one", 3000))
    reply = await _scripts.ACQUIRE(client, keys, ("two", 3000))
    assert reply[0] == 0
    assert 2000 < reply[1] <= 3000
    assert await client.get(owner_key(P, "a")) == b"one"


async def test_acquire_again_with_the_same_token_returns_the_same_fence(
    client: redis.Redis,
) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    first = await _scripts.ACQUIRE(client, keys, ("tok", 1000))
    again = await _scripts.ACQUIRE(client, keys, ("tok", 9000))
    assert again == first
    assert await client.pttl(owner_key(P, "a")) > 8000


async def test_fences_increase_across_holders(client: redis.Redis) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    fences = []
    for n in range(5):
        reply = await _scripts.ACQUIRE(client, keys, (f"t{n}", 1000))
        fences.append(reply[1])
        assert await _scripts.RELEASE(client, keys[:1], (f"t{n}", 1000)) == 1
    assert fences == sorted(set(fences))


async def test_fences_keep_increasing_when_the_server_lost_its_data(client: redis.Redis) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    before = (await _scripts.ACQUIRE(client, keys, ("t1", 1000)))[1]
    await client.flushdb()  # what a restart without persistence does
    after = (await _scripts.ACQUIRE(client, keys, ("t2", 1000)))[1]
    assert after > before


async def test_fences_keep_increasing_when_the_counter_went_back(client: redis.Redis) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    before = (await _scripts.ACQUIRE(client, keys, ("t1", 1000)))[1]
    await _scripts.RELEASE(client, keys[:1], ("t1", 1000))
    # A replica promoted before it received the latest increments.
    await client.set(fence_key(P, "a"), 5)
    after = (await _scripts.ACQUIRE(client, keys, ("t2", 1000)))[1]
    assert after > before


async def test_a_resent_release_still_counts_as_released(client: redis.Redis) -> None:
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    await _scripts.ACQUIRE(client, keys, ("tok", 5000))
    assert await _scripts.RELEASE(client, keys[:1], ("tok", 1000)) == 1
    assert await _scripts.RELEASE(client, keys[:1], ("tok", 1000)) == 1  # the same, resent
    assert await _scripts.RELEASE(client, keys[:1], ("other", 1000)) == 0
    assert await client.exists(owner_key(P, "a")) == 0
    assert 0 < await client.pttl(f"{owner_key(P, 'a')}:released:tok") <= 1000


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
    keys = (owner_key(P, "a"), owner_key(P, "b"))
    assert await _scripts.RELEASE(client, keys, ("tok", 1000)) == 1
    assert await client.exists(owner_key(P, "a")) == 0
    assert await client.get(owner_key(P, "b")) == b"other"
    assert await _scripts.RELEASE(client, keys, ("stranger", 1000)) == 0


async def test_scripts_reload_after_the_server_forgot_them(client: redis.Redis) -> None:
    await client.script_flush()
    keys = (owner_key(P, "a"), fence_key(P, "a"))
    assert (await _scripts.ACQUIRE(client, keys, ("tok", 1000)))[0] == 1
    assert await client.script_exists(_scripts.ACQUIRE.sha) == [True]
