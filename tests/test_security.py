"""Tokens, prefixes and a least-privilege ACL user, against the real server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from asynclock import LockBackendError, LockNotOwned, Mutex, Semaphore

from .conftest import owner_key
from .proxy import FaultProxy

#: The minimal ACL rules of a user of asynclock, as documented in README.md.
ACL_RULES = (
    "resetkeys", "~asynclock:*", "resetchannels", "&asynclock:*", "-@all",
    "+evalsha", "+eval", "+exists", "+publish", "+subscribe", "+unsubscribe",
    "+get", "+set", "+pttl", "+pexpire", "+del", "+time",
    "+zadd", "+zrem", "+zrange", "+zrangebyscore", "+zscore",
    "+zcard", "+lpos", "+lpush", "+ltrim",
)  # fmt: skip
#: What a client on a database other than 0 (a URL ending in /N) needs on top, as
#: documented in README.md: it selects the database when it connects.
DATABASE_ACL_RULES = ("+select",)
#: What a Semaphore needs on top, as documented in README.md.
SEMAPHORE_ACL_RULES = (
    "+zremrangebyscore", "+hget", "+hset", "+hdel", "+hvals",
)  # fmt: skip


async def test_tokens_are_long_random_and_distinct(client: redis.Redis) -> None:
    tokens = set()
    for _ in range(50):
        async with Mutex(client, "x") as lease:
            tokens.add(lease.token)
    assert len(tokens) == 50
    assert all(len(token) == 32 for token in tokens)  # 128 random bits, hex


async def test_only_the_holders_token_extends_or_releases(client: redis.Redis) -> None:
    mine = Mutex(client, "x", ttl=5)
    theirs = Mutex(client, "x", ttl=5)
    await mine.acquire()
    # A second object never acquired: it cannot release or extend what mine holds.
    with pytest.raises(LockNotOwned):
        await theirs.release()
    with pytest.raises(LockNotOwned):
        await theirs.extend()
    assert mine.owned
    await mine.release()


async def test_prefixes_keep_applications_apart(client: redis.Redis) -> None:
    async with Mutex(client, "job", prefix="app1:"):
        assert await Mutex(client, "job", prefix="app2:").acquire(blocking=False)
        assert not await Mutex(client, "job", prefix="app1:").acquire(blocking=False)
    keys = await client.keys("*")
    assert b"app1:fence:{job}" in keys
    assert b"app2:fence:{job}" in keys
    assert all(key.startswith((b"app1:", b"app2:")) for key in keys)


async def test_the_documented_rules_suffice_for_contended_mutexes(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    await client.execute_command("ACL", "SETUSER", "mutexer", "reset", "on", ">pw", *ACL_RULES)
    users = [make_client(username="mutexer", password="pw") for _ in range(2)]
    holder = Mutex(users[0], "x", ttl=5)
    await holder.acquire()
    # Waiters of two clients: notifications, the line of waiting processes, hand-over.
    waiters = [asyncio.create_task(Mutex(user, "x", ttl=5, timeout=5).acquire()) for user in users]
    await asyncio.sleep(0.2)
    await holder.release()
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    assert next(iter(done)).result() is True
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_least_privilege_acl_user_can_use_locks(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    rules = (*ACL_RULES, *SEMAPHORE_ACL_RULES)
    await client.execute_command("ACL", "SETUSER", "locker", "reset", "on", ">secret", *rules)
    try:
        user = make_client(username="locker", password="secret")
        async with Mutex(user, "x", ttl=0.3) as lease:
            await asyncio.sleep(0.4)  # extensions run under the same rules
            assert await Mutex(user, "x").locked()
        assert lease.extensions >= 1
        assert await client.exists(owner_key("x")) == 0
        async with Semaphore(user, "q", limit=2, ttl=0.3) as lease:
            await asyncio.sleep(0.4)
            assert await Semaphore(user, "q", limit=2).holders() == 1
        assert lease.extensions >= 1
        # Keys outside the allowed pattern are refused with a clear error.
        with pytest.raises(LockBackendError, match=r"(?i)permission"):
            await Mutex(user, "x", prefix="other:").acquire()
    finally:
        await client.execute_command("ACL", "DELUSER", "locker")


async def test_locks_work_over_tls(redis_url: str, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_side)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port, tls=server_side) as proxy:
        assert proxy.url.startswith("rediss://")
        client = redis.Redis.from_url(proxy.url, ssl_ca_certs=str(ca_file))
        async with Mutex(client, "tls", ttl=0.3) as lease:
            await asyncio.sleep(0.4)  # extensions over TLS too
        assert lease.extensions >= 1
        assert not await Mutex(client, "tls").locked()
        await client.aclose()


async def test_the_documented_rules_suffice_on_another_database(
    client: redis.Redis, redis_url: str
) -> None:
    rules = (*ACL_RULES, *DATABASE_ACL_RULES)
    await client.execute_command("ACL", "SETUSER", "elsewhere", "reset", "on", ">pw", *rules)
    where = urlsplit(redis_url)
    user = redis.Redis(
        host=where.hostname or "127.0.0.1",
        port=where.port or 6379,
        db=3,
        username="elsewhere",
        password="pw",
    )  # selects database 3 when it connects
    try:
        async with Mutex(user, "x", ttl=5) as lease:
            assert await user.get(owner_key("x")) == lease.token.encode()
        assert await user.exists(owner_key("x")) == 0
    finally:
        await user.aclose()
        await client.execute_command("ACL", "DELUSER", "elsewhere")
