"""MultiLock against the real server: all or none, no deadlock, excludes Mutex."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as redis

from asynclock import LockLost, MultiLock, Mutex

from .conftest import cancel_at_random_turns, owner_key


async def test_all_names_are_held_and_released_together(client: redis.Redis) -> None:
    lock = MultiLock(client, ["account:1", "account:2"])
    async with lock as lease:
        for name in ("account:1", "account:2"):
            assert await client.get(owner_key(name)) == lease.token.encode()
        assert set(lock.fencing_tokens) == {"account:1", "account:2"}
        assert lease.fencing_tokens == lock.fencing_tokens
    assert await client.exists(owner_key("account:1"), owner_key("account:2")) == 0


async def test_nothing_is_taken_while_any_name_is_held(client: redis.Redis) -> None:
    async with Mutex(client, "b"):
        assert not await MultiLock(client, ["a", "b", "c"]).acquire(blocking=False)
        assert await client.exists(owner_key("a"), owner_key("c")) == 0


async def test_multilock_and_mutex_exclude_each_other(client: redis.Redis) -> None:
    async with MultiLock(client, ["a", "b"]):
        assert not await Mutex(client, "a").acquire(blocking=False)
        assert not await Mutex(client, "b").acquire(blocking=False)
        assert await Mutex(client, "c").acquire(blocking=False)
    async with Mutex(client, "b"):
        assert not await MultiLock(client, ["b", "a"]).acquire(blocking=False)


async def test_fencing_tokens_increase_per_name(client: redis.Redis) -> None:
    async with MultiLock(client, ["a", "b"]) as first:
        pass
    async with Mutex(client, "a") as between:
        pass
    async with MultiLock(client, ["b", "a"]) as second:
        pass
    assert first.fencing_tokens["a"] < between.fencing_token < second.fencing_tokens["a"]
    assert first.fencing_tokens["b"] < second.fencing_tokens["b"]


async def test_overlapping_multilocks_in_any_order_never_deadlock_nor_overlap(
    client: redis.Redis,
) -> None:
    names = [f"n{n}" for n in range(6)]
    holding: dict[str, int] = dict.fromkeys(names, 0)
    rng = random.Random(3)
    sections = 0

    def enter(chosen: list[str]) -> None:
        for name in chosen:
            holding[name] += 1
            assert holding[name] == 1, f"{name} held twice at once"

    def leave(chosen: list[str]) -> None:
        for name in chosen:
            holding[name] -= 1

    async def worker() -> None:
        nonlocal sections
        for _ in range(12):
            chosen = rng.sample(names, rng.randint(2, 4))  # random names, random order
            async with MultiLock(client, chosen, ttl=5, timeout=60):
                enter(chosen)
                await asyncio.sleep(rng.uniform(0, 0.002))
                leave(chosen)
            sections += 1

    async def single() -> None:
        for _ in range(40):
            async with Mutex(client, "n0", ttl=5, timeout=60):
                enter(["n0"])
                await asyncio.sleep(0.001)
                leave(["n0"])

    started = time.monotonic()
    async with asyncio.timeout(120):
        await asyncio.gather(*(worker() for _ in range(32)), single())
    assert sections == 32 * 12
    assert time.monotonic() - started < 120
    assert await client.exists(*(owner_key(name) for name in names)) == 0


async def test_losing_one_name_loses_the_whole_lock(client: redis.Redis) -> None:
    with pytest.raises(LockLost):
        async with MultiLock(client, ["a", "b"], ttl=0.6):
            await client.delete(owner_key("b"))
            await asyncio.sleep(5)
    await asyncio.sleep(0.05)
    assert await client.exists(owner_key("a")) == 0  # the other name was cleaned up


async def test_cancelled_acquires_leave_nothing(client: redis.Redis) -> None:
    async def nothing_left() -> None:
        assert await client.exists(owner_key("a"), owner_key("b"), owner_key("c")) == 0

    cancelled, _ = await cancel_at_random_turns(
        lambda: MultiLock(client, ["a", "b", "c"], ttl=30), 4, nothing_left
    )
    assert cancelled >= 20


@pytest.mark.parametrize(
    ("names", "error"),
    [
        ([], ValueError),
        (["a", "a"], ValueError),
        (["a", ""], ValueError),
        (["a", 1], TypeError),
        ("ab", TypeError),
        (None, TypeError),
        ({"a", "b"}, TypeError),
    ],
)
def test_bad_names_are_refused(client: redis.Redis, names: object, error: type) -> None:
    with pytest.raises(error):
        MultiLock(client, names)  # type: ignore[arg-type]
