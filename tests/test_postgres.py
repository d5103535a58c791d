"""What is particular to :class:`PostgresBackend`, on the session's own server.

Processes that exclude each other, releases heard through ``LISTEN``/``NOTIFY``, a
server restart under a held lock, the listening connection lost, no connection held
while a lock is held. The promises shared with Redis are in ``test_backends.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from asynclock import (
    LinearBackoff,
    LockBackendError,
    LockLost,
    MemoryBackend,
    Mutex,
    ReadWriteLock,
    Semaphore,
    connect,
)
from asynclock._pgserver import PostgresServer
from asynclock.postgres import CHANNEL, PostgresBackend

from .conftest import empty_postgres
from .test_processes import assert_each_name_held_alone, most_at_once, overlaps, run_contenders

# Polling alone would take 5 s: a waiter back within a second was woken by NOTIFY.
SLOW_POLL = LinearBackoff(delay=5.0, jitter=0)


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    """A backend on a database without asynclock's schema (installed on connect)."""
    await empty_postgres(postgres_url)
    connected = await PostgresBackend.connect(postgres_url)
    try:
        yield connected
    finally:
        await connected.aclose()


@pytest.fixture
async def other(postgres_url: str, backend: PostgresBackend) -> AsyncIterator[PostgresBackend]:
    """A second backend on the same database: another process's view."""
    connected = await PostgresBackend.connect(postgres_url)
    try:
        yield connected
    finally:
        await connected.aclose()


@pytest.mark.slow
def test_processes_on_postgres_never_overlap(postgres_url: str, tmp_path: Path) -> None:
    asyncio.run(empty_postgres(postgres_url))
    records = run_contenders(postgres_url, tmp_path, "procs", [4, 10])
    assert len(records) == 3 * 4 * 10
    assert overlaps(records) == []
    fences = [record["fence"] for record in sorted(records, key=lambda r: r["start"])]
    assert fences == sorted(set(fences))
    names = ["m1", "m2", "m3", "m4"]
    records = run_contenders(postgres_url, tmp_path, ",".join(names), [4, 8])
    assert_each_name_held_alone(records, names)
    records = run_contenders(postgres_url, tmp_path, "sem", [6, 6, 2])
    assert most_at_once(records) == 2


async def test_a_release_wakes_another_process_waiter_through_notify(
    backend: PostgresBackend, other: PostgresBackend
) -> None:
    for make in (
        lambda store: Mutex(store, "job", ttl=5.0, retry=SLOW_POLL),
        lambda store: Semaphore(store, "pool", limit=1, ttl=5.0, retry=SLOW_POLL),
        lambda store: ReadWriteLock(store, "rw", ttl=5.0, retry=SLOW_POLL).write(),
    ):
        holder, waiter = make(backend), make(other)
        assert await holder.acquire()
        waiting = asyncio.create_task(waiter.acquire(timeout=10.0))
        await asyncio.sleep(0.3)  # the waiter tried, and listens
        released = time.monotonic()
        await holder.release()
        assert await waiting
        assert time.monotonic() - released < 1.0
        await waiter.release()


async def test_a_busy_process_hands_over_in_runs_and_lets_other_processes_in(
    backend: PostgresBackend, other: PostgresBackend
) -> None:
    stop = asyncio.Event()

    async def busy() -> None:  # contended in its own process, without a pause
        while not stop.is_set():
            async with Mutex(backend, "hot", ttl=5.0):
                await asyncio.sleep(0)

    workers = [asyncio.create_task(busy()) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        outsider = Mutex(other, "hot", ttl=5.0)
        assert await outsider.acquire(timeout=5.0)  # not starved by the hand-overs
        await outsider.release()
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def test_a_clean_up_racing_its_acquire_leaves_nothing_held(
    backend: PostgresBackend, postgres_url: str
) -> None:
    # The interleaving a cancelled acquire can meet: its command still waits in the
    # database (behind another caller's row lock) when its clean-up release arrives.
    holder, releaser, acquirer, cleaner = [await asyncpg.connect(postgres_url) for _ in range(4)]
    try:
        assert await holder.fetchval("SELECT asynclock.acquire(ARRAY['k'], 'H', 60000)")
        transaction = releaser.transaction()
        await transaction.start()
        await releaser.execute("SELECT asynclock.release(ARRAY['k'], 'H')")  # not committed
        acquire = asyncio.create_task(
            acquirer.fetchval("SELECT asynclock.acquire(ARRAY['k'], 'T', 60000)")
        )
        await asyncio.sleep(0.3)  # T's acquire waits on H's row
        clean_up = asyncio.create_task(
            cleaner.fetchval("SELECT asynclock.release(ARRAY['k'], 'T')")
        )
        await asyncio.sleep(0.3)
        await transaction.commit()
        await asyncio.wait_for(acquire, 5.0)
        await asyncio.wait_for(clean_up, 5.0)
        left = await holder.fetchval("SELECT count(*) FROM asynclock.leases WHERE token = 'T'")
        assert left == 0  # whichever order they ran in, T holds nothing
    finally:
        for connection in (holder, releaser, acquirer, cleaner):
            await connection.close()


async def test_a_stricter_isolation_level_is_refused_not_miscounted(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    strict = await PostgresBackend.connect(
        postgres_url, server_settings={"default_transaction_isolation": "repeatable read"}
    )
    try:
        with pytest.raises(LockBackendError, match="READ COMMITTED"):
            await Semaphore(strict, "s", limit=1, ttl=5.0).acquire(blocking=False)
    finally:
        await strict.aclose()


async def test_a_held_lock_survives_a_server_restart(
    backend: PostgresBackend, other: PostgresBackend, postgres_server: PostgresServer
) -> None:
    async with Mutex(backend, "job", ttl=1.0) as lease:
        postgres_server.restart()  # the pool's connections are cut
        await asyncio.sleep(1.5)  # past the TTL: only extensions kept it
        assert lease.owned
        assert lease.extensions >= 2
        assert not await Mutex(other, "job", blocking=False).acquire()
    assert await Mutex(other, "job", blocking=False).acquire()


async def test_a_server_down_longer_than_the_ttl_loses_the_lease(
    backend: PostgresBackend, postgres_server: PostgresServer
) -> None:
    lost = False
    try:
        # Lost (its body cancelled) when no extension got through before the TTL ran
        # out; its release then fails too, and the loss is what the caller is told.
        with pytest.raises(LockLost):
            async with Mutex(backend, "job", ttl=0.5):
                postgres_server.stop()
                try:
                    await asyncio.sleep(3)
                except asyncio.CancelledError:
                    lost = True
                    raise
    finally:
        postgres_server.start()
    assert lost


async def test_an_acquire_while_the_server_is_down_raises_lock_backend_error(
    backend: PostgresBackend, postgres_server: PostgresServer
) -> None:
    postgres_server.stop()
    try:
        with pytest.raises(LockBackendError):
            await Mutex(backend, "job", ttl=5.0, blocking=False).acquire()
    finally:
        postgres_server.start()
    assert await Mutex(backend, "job", ttl=5.0).acquire(timeout=5.0)


async def test_waiters_recheck_when_the_listening_connection_is_lost(
    backend: PostgresBackend, other: PostgresBackend, postgres_url: str
) -> None:
    holder = Mutex(backend, "job", ttl=5.0)
    assert await holder.acquire()
    waiting = asyncio.create_task(Mutex(other, "job", ttl=5.0, retry=SLOW_POLL).acquire())
    await asyncio.sleep(0.3)
    admin = await asyncpg.connect(postgres_url)
    try:
        # Cut every listening connection: releases meanwhile go unheard.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    await holder.release()
    assert await asyncio.wait_for(waiting, 2.0)  # woken by the loss, it re-checked


async def test_a_lost_notification_costs_a_recheck_not_a_hang(
    backend: PostgresBackend, other: PostgresBackend
) -> None:
    holder = Mutex(backend, "job", ttl=5.0)
    assert await holder.acquire()
    waiting = asyncio.create_task(Mutex(other, "job", ttl=5.0).acquire())
    await asyncio.sleep(0.3)  # the waiter tried, and listens
    listener = other.notifications()._connection
    assert listener is not None
    await listener.execute(f"UNLISTEN {CHANNEL}")  # the release's NOTIFY goes unheard
    released = time.monotonic()
    await holder.release()
    assert await asyncio.wait_for(waiting, 3.0)  # the waiter's fallback re-check
    assert time.monotonic() - released < 1.5


async def test_no_connection_is_held_while_a_lock_is_held(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    backend = await PostgresBackend.connect(postgres_url, max_connections=1)
    try:
        # One pooled connection: a lock holding it would starve every other call.
        async with Mutex(backend, "a", ttl=5.0), Mutex(backend, "b", ttl=5.0):
            async with Semaphore(backend, "s", limit=2, ttl=5.0):
                assert await Mutex(backend, "a").locked()
            admin = await asyncpg.connect(postgres_url)
            try:
                in_transaction = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                )
            finally:
                await admin.close()
            assert in_transaction == 0
    finally:
        await backend.aclose()


async def test_replicas_starting_together_install_the_schema_once(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    backends = await asyncio.gather(*(PostgresBackend.connect(postgres_url) for _ in range(4)))
    try:
        async with Mutex(backends[0], "job", ttl=5.0):
            assert not await Mutex(backends[3], "job", blocking=False).acquire()
    finally:
        for backend in backends:
            await backend.aclose()


async def test_a_role_with_least_privileges_uses_a_schema_installed_once(
    postgres_url: str, backend: PostgresBackend
) -> None:
    # `backend` installed the schema, as an administrator's migration would.
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute("DROP ROLE IF EXISTS locker")
        await admin.execute("CREATE ROLE locker LOGIN")
        await admin.execute("REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await admin.execute("GRANT USAGE ON SCHEMA asynclock TO locker")
        await admin.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA asynclock TO locker")
        await admin.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA asynclock TO locker"
        )
        await admin.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA asynclock TO locker")
        url = postgres_url.replace("postgres@", "locker@")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await PostgresBackend.connect(url)  # installing needs CREATE
        limited = await PostgresBackend.connect(url, install_schema=False)
        try:
            async with Mutex(limited, "job", ttl=5.0), Semaphore(limited, "s", limit=1):
                assert not await Mutex(backend, "job", blocking=False).acquire()
            rw = ReadWriteLock(limited, "rw", ttl=5.0)
            async with rw.write():
                assert await rw.writing()
        finally:
            await limited.aclose()
    finally:
        await admin.execute("GRANT CREATE ON DATABASE postgres TO PUBLIC")
        await admin.execute("DROP OWNED BY locker")
        await admin.execute("DROP ROLE locker")
        await admin.close()


async def test_without_installing_a_missing_schema_fails_at_connect(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await PostgresBackend.connect(postgres_url, install_schema=False)


async def test_the_sweep_drops_rows_nobody_needs(
    backend: PostgresBackend, postgres_url: str
) -> None:
    async with Mutex(backend, "kept", ttl=60.0):
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "INSERT INTO asynclock.leases VALUES ('gone', 't', 1, now() - interval '1 hour');"
                "INSERT INTO asynclock.released VALUES ('old', now() - interval '1 hour');"
                "INSERT INTO asynclock.fences VALUES ('idle', 1, now() - interval '2 days');"
            )
            await admin.execute("SELECT asynclock.sweep()")
            leases = await admin.fetch("SELECT key FROM asynclock.leases")
            assert [row["key"] for row in leases] == ["asynclock:lock:{kept}"]
            assert await admin.fetchval("SELECT count(*) FROM asynclock.released") == 0
            assert not await admin.fetchval(
                "SELECT count(*) FROM asynclock.fences WHERE key = 'idle'"
            )
        finally:
            await admin.close()


async def test_options_for_the_pool_alone_do_not_break_listening(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    backend = await PostgresBackend.connect(postgres_url, max_inactive_connection_lifetime=60)
    try:
        holder = Mutex(backend, "job", ttl=5.0)
        assert await holder.acquire()
        waiting = asyncio.create_task(Mutex(backend, "job", ttl=5.0).acquire(timeout=5.0))
        await asyncio.sleep(0.1)
        await holder.release()
        assert await waiting
    finally:
        await backend.aclose()


async def test_names_postgres_cannot_store_are_refused_before_anything_is_sent(
    backend: PostgresBackend,
) -> None:
    with pytest.raises(ValueError, match="NUL"):
        Mutex(backend, "a\x00b")
    with pytest.raises(ValueError, match="shorter"):
        Mutex(backend, "x" * 3000)


async def test_connect_to_a_postgres_url(postgres_url: str) -> None:
    await empty_postgres(postgres_url)
    async with await connect(postgres_url) as backend:
        assert isinstance(backend, PostgresBackend)
        assert backend.kind == "postgresql"
        async with Mutex(backend, "job", ttl=5.0) as lease:
            assert lease.fencing_token > 0


async def test_a_missing_database_is_an_error_even_with_a_fallback(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(LockBackendError, match="no_such_database"):
        await connect(missing, fallback="memory", timeout=5.0)


async def test_a_malformed_postgres_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot connect to"):
        await connect("postgresql://user@host:notaport/db")


async def test_an_unreachable_postgres_fails_or_falls_back_at_connect_time(
    postgres_server: PostgresServer,
) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{postgres_server.port + 1}/postgres"
    with pytest.raises(LockBackendError, match="connect") as caught:
        await connect(url, timeout=2.0)
    assert "secret" not in str(caught.value)
    backend = await connect(url, fallback="memory", timeout=2.0)
    assert isinstance(backend, MemoryBackend)
    assert backend.fell_back_from == url.replace("secret", "***")
