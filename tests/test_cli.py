"""The command line, end to end: ``python -m asynclock`` in a subprocess, on a real server.

The outputs README.md shows are checked here against what the commands print (every
number and token may differ; the layout and the words may not).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as redis

from asynclock import LockLost, LockNotOwned, Mutex, ReadWriteLock, Semaphore
from asynclock._admin import force_release, inspect_lock
from asynclock._server import free_port

README = Path(__file__).parent.parent / "README.md"


async def cli(url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``python -m asynclock ARGS`` with ``ASYNCLOCK_URL=url``; return status and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asynclock", *args,
        env=dict(os.environ, ASYNCLOCK_URL=url),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def start_watch(url: str, *args: str) -> asyncio.subprocess.Process:
    """Start ``python -m asynclock watch ARGS`` on ``url``, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asynclock", "watch", *args,
        env=dict(os.environ, ASYNCLOCK_URL=url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def readme_sample(command: str) -> list[str]:
    """The output README.md shows under ``$ <command>``."""
    block = re.search(rf"\$ {re.escape(command)}\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, f"README.md shows no output of `{command}`"
    return block.group(1).rstrip("\n").split("\n")


def shape(line: str) -> str:
    """A regex for lines like ``line``: other tokens, numbers and column widths."""
    pattern = re.escape(line.rstrip())
    pattern = re.sub(r"\d\d:\d\d:\d\d\\\.\d\d\d", r"\\d\\d:\\d\\d:\\d\\d\\.\\d\\d\\d", pattern)
    pattern = re.sub(r"\b[0-9a-f]{8}\b", "[0-9a-f]{8}", pattern)
    pattern = re.sub(r"(?<![\w{])\d+\\\.\d\b", r"\\d+\\.\\d", pattern)
    pattern = re.sub(r"\b\d{10,}\b", r"\\d{10,}", pattern)
    pattern = re.sub(r"(\\ )+", " +", pattern)
    return pattern


def assert_like_readme(command: str, output: str) -> None:
    """``output`` has README's sample of ``command``, line for line, in its shape."""
    sample = readme_sample(command)
    lines = output.rstrip("\n").split("\n")
    assert len(lines) == len(sample), (sample, lines)
    for expected, line in zip(sample, lines, strict=True):
        assert re.fullmatch(shape(expected), line.rstrip()), (expected, line)


async def test_inspect_lists_holders_waiters_and_semaphores(
    client: redis.Redis, redis_url: str
) -> None:
    report = Mutex(client, "jobs:report", ttl=30)
    assert await report.acquire()
    quota = [Semaphore(client, "api:quota", limit=3, ttl=10) for _ in range(2)]
    for semaphore in quota:
        assert await semaphore.acquire()
    waiter = asyncio.create_task(Mutex(client, "jobs:report").acquire(timeout=10))
    for _ in range(500):  # until the waiter stands in line (5 s at most)
        if await client.exists("asynclock:line-alive:{jobs:report}"):
            break
        await asyncio.sleep(0.01)
    try:
        status, out, err = await cli(redis_url, "inspect")
        assert (status, err) == (0, "")
        assert_like_readme("python -m asynclock inspect", out)
        status, out, _ = await cli(redis_url, "inspect", "--json", "jobs:*")
        assert status == 0
        [state] = json.loads(out)
        assert state["name"] == "jobs:report"
        assert state["primitive"] == "mutex"
        assert state["waiting"] == 1
        [holder] = state["holders"]
        assert report.lease is not None
        assert holder["token"] == report.lease.token
        assert holder["fencing_token"] == report.fencing_token
        assert 25 < holder["ttl"] <= 30
        assert 0 <= holder["held_for"] < 10
        status, out, _ = await cli(redis_url, "inspect", "--json", "api:*")
        [state] = json.loads(out)
        assert (state["primitive"], state["limit"], len(state["holders"])) == ("semaphore", 3, 2)
        assert {h["token"] for h in state["holders"]} == {s.lease.token for s in quota if s.lease}
        status, out, _ = await cli(redis_url, "inspect", "nothing:*")
        assert status == 0
        assert "no lock held" in out
    finally:
        waiter.cancel()
        await report.release()
        for semaphore in quota:
            await semaphore.release()


async def test_release_needs_force_and_then_frees_the_lock_and_wakes_the_waiter(
    client: redis.Redis, make_client: object, redis_url: str
) -> None:
    status, _, err = await cli(redis_url, "release", "jobs:nightly")
    assert status == 2
    assert "without --force" in err
    other = redis.Redis.from_url(redis_url)
    waiter = asyncio.create_task(Mutex(other, "jobs:nightly", ttl=5).acquire(timeout=20))
    started = time.monotonic()
    try:
        with pytest.raises(LockLost):
            async with Mutex(client, "jobs:nightly", ttl=0.9):
                # Not confirmed: nothing happens.
                status, out, _ = await cli(
                    redis_url, "release", "jobs:nightly", "--force", stdin="n\n"
                )
                assert (status, out.strip()) == (1, "not released")
                status, out, err = await cli(
                    redis_url, "release", "jobs:nightly", "--force", stdin="y\n"
                )
                assert status == 0
                assert err.startswith("release mutex 'jobs:nightly' held by")  # the question
                assert_like_readme(  # as the terminal shows it, the answer typed in
                    "python -m asynclock release jobs:nightly --force", err + "y\n" + out
                )
                await asyncio.sleep(10)  # cancelled by the loss, at the next extension
        # Lost within a third of the TTL of the release, plus the commands' time.
        assert time.monotonic() - started < 5
        assert await asyncio.wait_for(waiter, 5)  # woken by the release
    finally:
        waiter.cancel()
        await other.aclose()
    status, out, _ = await cli(redis_url, "release", "jobs:free", "--force", "--yes")
    assert (status, out.strip()) == (1, "'jobs:free' is not held: nothing to release")


async def test_release_frees_every_holder_of_a_semaphore(
    client: redis.Redis, redis_url: str
) -> None:
    holders = [Semaphore(client, "pool", limit=2, ttl=30, auto_extend=False) for _ in range(2)]
    for semaphore in holders:
        assert await semaphore.acquire()
    status, out, _ = await cli(redis_url, "release", "pool", "--force", "--yes", "--json")
    assert status == 0
    assert set(json.loads(out)["released"]) == {s.lease.token for s in holders if s.lease}
    assert await Semaphore(client, "pool", limit=2).holders() == 0


async def test_inspect_and_release_a_read_write_lock_by_side(
    client: redis.Redis, make_client: object, redis_url: str
) -> None:
    readers = [ReadWriteLock(client, "catalog", ttl=30).read() for _ in range(2)]
    for reader in readers:
        assert await reader.acquire()
    other = redis.Redis.from_url(redis_url)
    writer = ReadWriteLock(other, "catalog", ttl=30).write()
    writing = asyncio.create_task(writer.acquire(timeout=20))
    try:
        for _ in range(500):  # until the writer stands in line (5 s at most)
            if await client.exists("asynclock:rwlock:{catalog}:line-alive"):
                break
            await asyncio.sleep(0.01)
        status, out, _ = await cli(redis_url, "inspect", "--json", "catalog")
        assert status == 0
        [state] = json.loads(out)
        assert (state["primitive"], state["waiting"]) == ("rwlock", 1)
        assert {h["token"] for h in state["holders"]} == {r.lease.token for r in readers if r.lease}
        assert {h["side"] for h in state["holders"]} == {"read"}
        status, out, _ = await cli(redis_url, "inspect", "catalog")
        assert "rwlock read" in out
        status, out, _ = await cli(redis_url, "release", "catalog", "--force", "--yes")
        assert status == 0
        assert await asyncio.wait_for(writing, 5)  # woken by the forced release
        status, out, _ = await cli(redis_url, "inspect", "--json", "catalog")
        [state] = json.loads(out)
        assert [h["side"] for h in state["holders"]] == ["write"]
        assert state["holders"][0]["token"] == writer.lease.token  # type: ignore[union-attr]
        for reader in readers:  # their own releases find the leases gone
            with pytest.raises(LockNotOwned):
                await reader.release()
    finally:
        writing.cancel()
        await other.aclose()


async def test_watch_prints_acquisitions_hand_overs_releases_and_expiries(
    client: redis.Redis, redis_url: str
) -> None:
    await client.config_set("notify-keyspace-events", "K$gx")
    process = await start_watch(redis_url, "jobs:*")
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first.decode().startswith("watching 'jobs:*'")
        first_holder = Mutex(client, "jobs:report", ttl=5)
        assert await first_holder.acquire()
        second = Mutex(client, "jobs:report", ttl=5)
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.3)
        await first_holder.release()  # handed over to the waiting coroutine
        assert await waiting
        other = Mutex(client, "other", ttl=5)
        assert await other.acquire()  # not matched: not shown
        await other.release()
        await second.release()
        # A holder that crashed: its key is set as an acquire sets it, and expires.
        await client.set("asynclock:lock:{jobs:cleanup}", "f" * 32, px=200)
        lines = [(await asyncio.wait_for(process.stdout.readline(), 10)).decode() for _ in range(5)]
        assert_like_readme("python -m asynclock watch 'jobs:*'", first.decode() + "".join(lines))
        process.send_signal(signal.SIGINT)  # Ctrl-C: the way watch ends
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await client.config_set("notify-keyspace-events", "")


async def test_watch_without_keyspace_events_shows_releases_that_wake_someone(
    client: redis.Redis, redis_url: str
) -> None:
    process = await start_watch(redis_url, "--json", "--seconds", "20")
    assert process.stdout is not None
    try:
        holder = Mutex(client, "job", ttl=5)
        assert await holder.acquire()
        other = redis.Redis.from_url(redis_url)  # another process's waiter, in effect
        waiter = asyncio.create_task(Mutex(other, "job", ttl=5).acquire())
        await asyncio.sleep(1.0)  # the watcher subscribed, the waiter stands in line
        await holder.release()
        assert await waiter
        event = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert (event["event"], event["name"]) == ("released", "job")
        assert event["detail"].startswith("(wakes process ")
        await other.aclose()
    finally:
        process.kill()
        await process.wait()


async def test_errors_are_one_line_with_a_status_scripts_can_use(
    client: redis.Redis, redis_url: str
) -> None:
    status, _, err = await cli(f"redis://127.0.0.1:{free_port()}/0", "inspect")
    assert status == 3
    assert err.startswith("error: cannot reach redis://127.0.0.1:")
    await client.acl_setuser("cli-user", enabled=True, passwords=["+right"], reset_keys=True)
    try:
        port = redis_url.split(":")[-1].split("/")[0]
        status, _, err = await cli(f"redis://cli-user:wrong@127.0.0.1:{port}/0", "inspect")
        assert status == 3
        assert err.startswith("error: authentication failed at redis://cli-user:***@")
        assert "wrong" not in err
        status, _, err = await cli(f"redis://cli-user:right@127.0.0.1:{port}/0", "inspect")
        assert status == 3
        assert err.startswith("error: permission denied")
    finally:
        await client.acl_deluser("cli-user")
    status, _, err = await cli(redis_url, "inspect", "--prefix", "{bad}:")
    assert status == 2
    assert "prefix must not contain" in err
    status, _, err = await cli(redis_url, "nonsense")
    assert status == 2
    for other_store in ("memory://", "postgresql://user:secret@127.0.0.1/db"):
        status, _, err = await cli(other_store, "inspect")
        assert status == 2
        assert "the command line works on Redis only" in err
        assert "secret" not in err


@pytest.mark.parametrize("command", [[], ["inspect"], ["release"], ["watch"], ["demo"], ["bench"]])
async def test_every_command_has_help(command: list[str], redis_url: str) -> None:
    status, out, _ = await cli(redis_url, *command, "--help")
    assert status == 0
    # bench hands over to the benchmark report's own command line.
    program = "benchmarks" if command == ["bench"] else "asynclock"
    assert out.startswith(f"usage: python -m {program}")


async def test_a_forced_release_is_a_loss_to_the_holder_and_spares_a_new_holder(
    client: redis.Redis, redis_url: str
) -> None:
    holder = Mutex(client, "job", ttl=30, auto_extend=False)
    assert await holder.acquire()
    status, _, _ = await cli(redis_url, "release", "job", "--force", "--yes")
    assert status == 0
    with pytest.raises(LockNotOwned, match="gone"):
        await holder.release()  # not counted as a release of its own
    # Inspected, then let go and taken by another before the forced release: spared.
    first = Mutex(client, "job", ttl=30)
    assert await first.acquire()
    state = await inspect_lock(client, "job")
    assert state is not None
    await first.release()
    second = Mutex(client, "job", ttl=30)
    assert await second.acquire()
    assert await force_release(client, state) == ()
    assert second.owned
    assert await second.locked()
    await second.release()


async def test_the_documented_acl_rules_let_an_operator_inspect_free_and_watch(
    client: redis.Redis, redis_url: str
) -> None:
    from .test_security import ACL_RULES, SEMAPHORE_ACL_RULES

    readme = README.read_text()
    extra = re.search(
        r"these commands needs, on top of the rules under Permissions, (.*?), and", readme, re.S
    )
    assert extra
    rules = [*ACL_RULES, *SEMAPHORE_ACL_RULES, *re.findall(r"\+[a-z|]+", extra.group(1))]
    rules.append("&__keyspace@0__:asynclock:*")
    await client.acl_setuser("operator", enabled=True, passwords=["+pw"], reset_keys=True)
    await client.execute_command("ACL", "SETUSER", "operator", *rules)
    port = redis_url.split(":")[-1].split("/")[0]
    url = f"redis://operator:pw@127.0.0.1:{port}/0"
    await client.config_set("notify-keyspace-events", "K$gx")
    try:
        holder = Mutex(client, "job", ttl=30)
        assert await holder.acquire()
        status, out, err = await cli(url, "inspect")
        assert (status, err) == (0, "")
        assert "job" in out
        status, _, err = await cli(url, "release", "job", "--force", "--yes")
        assert (status, err) == (0, "")
        status, _, err = await cli(url, "watch", "--seconds", "0.5")
        assert status == 0, err
    finally:
        await client.config_set("notify-keyspace-events", "")
        await client.acl_deluser("operator")
