"""``connect(url)``: the store a URL names, the explicit memory fallback, bad URLs."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from asynclock import (
    LockBackendError,
    LockEvent,
    MemoryBackend,
    Mutex,
    RedisBackend,
    connect,
    subscribe,
)
from asynclock._connect import _redis_client, redacted


def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_passwords_never_reach_a_message() -> None:
    assert redacted("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redacted("postgresql://h/db?sslmode=require&password=secret") == (
        "postgresql://h/db?sslmode=require&password=***"
    )
    assert redacted("memory://") == "memory://"


def test_a_sentinel_url_gives_the_primary_its_credentials_decoded() -> None:
    client = _redis_client(
        "redis+sentinel", "redis+sentinel://app:p%40ss@[::1]:26379,h2:26380/locks/2", {}
    )
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "p@ss"
    assert kwargs["username"] == "app"
    assert kwargs["db"] == 2
    assert (
        client.connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs[
            "host"
        ]
        == "::1"
    )


async def test_memory_url() -> None:
    backend = await connect("memory://")
    assert isinstance(backend, MemoryBackend)
    assert backend.fell_back_from is None
    async with backend, Mutex(backend, "job") as lease:
        assert lease.fencing_token > 0


async def test_a_redis_url_gives_a_redis_backend_that_closes_its_client(redis_url: str) -> None:
    backend = await connect(redis_url, socket_timeout=5)
    assert isinstance(backend, RedisBackend)
    assert backend.kind == "redis"
    assert backend.spans_processes
    async with backend:
        async with Mutex(backend, "job", ttl=5.0):
            assert await backend.client.exists("asynclock:lock:{job}") == 1
        client = backend.client
    assert client.connection_pool._in_use_connections == set()


async def test_an_unreachable_store_fails_at_connect_time() -> None:
    url = f"redis://:secret@127.0.0.1:{unused_port()}/0"
    started = time.monotonic()
    with pytest.raises(LockBackendError, match="connect") as caught:
        await connect(url, timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert "secret" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_the_memory_fallback_is_loud_and_visible(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:secret@127.0.0.1:{unused_port()}/0"
    seen: list[LockEvent] = []
    unsubscribe = subscribe(seen.append)
    try:
        with caplog.at_level(logging.WARNING, logger="asynclock"):
            backend = await connect(url, fallback="memory", timeout=2.0)
    finally:
        unsubscribe()
    assert isinstance(backend, MemoryBackend)
    assert backend.fell_back_from == url.replace("secret", "***")
    [event] = [event for event in seen if event.event == "backend_fallback"]
    assert event.lock == backend.fell_back_from
    assert event.error is not None
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "backend_fallback"]
    assert record.levelno == logging.WARNING
    assert "nothing across processes" in record.getMessage()
    assert "secret" not in record.getMessage()


async def test_a_store_that_answers_with_an_error_is_never_replaced_by_memory(
    redis_url: str,
) -> None:
    # A wrong password is a deployment's mistake: falling back would hide it, and
    # leave every replica with locks that exclude nothing.
    wrong = redis_url.replace("redis://", "redis://someone:wrong@")
    with pytest.raises(LockBackendError, match="connect"):
        await connect(wrong, fallback="memory", timeout=2.0)


async def test_a_store_that_never_answers_times_out_with_a_clear_message() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with pytest.raises(LockBackendError, match=r"no answer within 0\.5 s"):
            await connect(url, timeout=0.5)
        backend = await connect(url, fallback="memory", timeout=0.5)
        assert isinstance(backend, MemoryBackend)


async def test_a_reachable_store_is_used_even_with_a_fallback(redis_url: str) -> None:
    async with await connect(redis_url, fallback="memory") as backend:
        assert isinstance(backend, RedisBackend)


@pytest.mark.parametrize(
    ("url", "options", "error", "match"),
    [
        ("mysql://x", {}, ValueError, "scheme must be one of"),
        ("localhost:6379", {}, ValueError, "scheme must be one of"),
        ("memory://x", {}, ValueError, "nothing after it"),
        (b"redis://", {}, TypeError, "must be a str"),
        ("memory://", {"fallback": "redis"}, ValueError, "fallback"),
        ("memory://", {"timeout": 0}, ValueError, "timeout"),
        ("redis+sentinel://127.0.0.1:1", {}, ValueError, "service name"),
        ("redis+sentinel://127.0.0.1/svc", {}, ValueError, "host:port"),
        ("redis+sentinel://127.0.0.1:26379/svc?socket_timeout=1", {}, ValueError, "no query"),
    ],
)
async def test_bad_urls_and_options_are_refused_before_anything_is_sent(
    url: object, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await connect(url, **options)  # type: ignore[arg-type]
