"""``Election`` on the real server: terms, hand-over after resign(), loss, watching."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

import asynclock
from asynclock import Election, LeaderInfo, LockEvent, LockLost

from .conftest import cancel_at_random_turns, owner_key
from .test_processes import overlaps

HERE = Path(__file__).parent


async def leading_in_a_task(election: Election) -> asyncio.Task[None]:
    """Start ``election.run()`` with a body that leads until cancelled; return its task
    once it leads."""
    leading = asyncio.Event()

    async def lead() -> None:
        leading.set()
        await asyncio.sleep(60)

    running = asyncio.create_task(election.run(lead))
    await asyncio.wait_for(leading.wait(), 5)
    return running


async def test_a_term_announces_its_leader_and_ends_with_the_body(client: redis.Redis) -> None:
    election = Election(client, "scheduler", identity="web-1:11", ttl=5)
    assert await election.leader() is None
    async with election as term:
        assert election.leading
        info = await election.leader()
        assert info is not None
        assert info.identity == "web-1:11"
        assert info.term == term.fencing_token
        assert info.since is not None
        assert abs(info.since - time.time()) < 5
    assert not election.leading
    assert await election.leader() is None
    async with election as second:
        assert second.fencing_token > term.fencing_token  # terms increase


async def test_another_replica_reads_the_leader_and_an_old_announcement_is_not_trusted(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    leader = Election(client, "jobs", identity="a", ttl=5)
    observer = Election(make_client(), "jobs", identity="b", ttl=5)
    async with leader:
        assert (await observer.leader()) == LeaderInfo("a", leader._term.fencing_token, ANY)  # type: ignore[union-attr]
    # The announcement outlives the term, but names a token that no longer holds.
    assert await client.exists("asynclock:leader:{jobs}")
    assert await observer.leader() is None


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY: Any = _Any()


async def test_resign_hands_over_within_milliseconds_and_run_returns_none(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    first = Election(client, "scheduler", identity="first", ttl=10)
    second = Election(make_client(), "scheduler", identity="second", ttl=10)
    leading = asyncio.Event()
    stopped = []

    async def lead() -> str:
        leading.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(True)
            raise
        return "not reached"

    running = asyncio.create_task(first.run(lead))
    await asyncio.wait_for(leading.wait(), 5)
    campaign = asyncio.create_task(second.__aenter__())
    await asyncio.sleep(0.3)
    assert not campaign.done()
    resigned = time.monotonic()
    await first.resign()
    term = await asyncio.wait_for(campaign, 5)
    took = time.monotonic() - resigned
    assert await asyncio.wait_for(running, 5) is None
    assert stopped == [True]
    info = await first.leader()
    assert info is not None
    assert (info.identity, info.term) == ("second", term.fencing_token)
    await second.resign()  # its term began in the campaign's task
    assert await first.leader() is None
    assert took < 0.5  # a notification, not the TTL (10 s) or a poll
    print(f"the second replica led {took * 1000:.1f} ms after resign()")


async def test_run_campaigns_again_after_losing_its_term(client: redis.Redis) -> None:
    election = Election(client, "reelected", identity="me", ttl=1.5)
    terms: list[int] = []

    async def lead() -> int:
        lease = election._term
        assert lease is not None
        terms.append(lease.fencing_token)
        if len(terms) == 1:
            await client.delete(owner_key("reelected"))  # the lease is lost
            await asyncio.sleep(10)  # cancelled by the loss
        return len(terms)

    assert await asyncio.wait_for(election.run(lead), 10) == 2
    assert terms[1] > terms[0]


async def test_an_error_of_the_leader_ends_its_term_and_propagates(client: redis.Redis) -> None:
    election = Election(client, "failing", identity="me", ttl=5)

    async def lead() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await election.run(lead)
    assert await election.leader() is None


async def test_watch_yields_every_change_of_leader(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    first = Election(client, "watched", identity="first", ttl=5)
    second = Election(make_client(), "watched", identity="second", ttl=5)
    seen: list[str | None] = []
    got = asyncio.Event()

    async def observe() -> None:
        async for info in Election(make_client(), "watched", ttl=5).watch(interval=30):
            seen.append(None if info is None else info.identity)
            got.set()

    watching = asyncio.create_task(observe())

    async def next_change() -> None:
        await asyncio.wait_for(got.wait(), 2)  # by a message: the interval is 30 s
        got.clear()

    await next_change()
    async with first:
        await next_change()
    await next_change()
    async with second:
        await next_change()
    await next_change()
    watching.cancel()
    assert seen == [None, "first", None, "second", None]


async def test_a_crashed_leaders_identity_is_gone_with_its_lease(client: redis.Redis) -> None:
    election = Election(client, "crashed", identity="gone", ttl=5)
    lease = await election.__aenter__()
    await client.pexpire(owner_key("crashed"), 50)  # as a crash lets it run out
    await asyncio.sleep(0.1)
    assert await Election(client, "crashed", ttl=5).leader() is None
    with pytest.raises(LockLost):
        await election.__aexit__(None, None, None)
    assert not lease.owned


async def test_events_tell_elected_resigned_and_deposed(client: redis.Redis) -> None:
    events: list[LockEvent] = []
    stop = asynclock.subscribe(events.append)
    try:
        election = Election(client, "told", identity="me", ttl=1.5)
        async with election as term:
            pass
        with pytest.raises(LockLost):
            async with election:
                await client.delete(owner_key("told"))
                await asyncio.sleep(5)
    finally:
        stop()
    ours = [(e.event, e.primitive) for e in events if e.event.startswith("leader_")]
    assert ours == [
        ("leader_elected", "election"),
        ("leader_resigned", "election"),
        ("leader_elected", "election"),
        ("leader_deposed", "election"),
    ]
    assert events[[e.event for e in events].index("leader_elected")].fencing_token == (
        term.fencing_token
    )


async def test_a_term_lost_under_an_error_of_the_body_is_told_as_deposed(
    client: redis.Redis,
) -> None:
    events: list[LockEvent] = []
    stop = asynclock.subscribe(events.append)
    try:
        with pytest.raises(KeyError) as raised:
            async with Election(client, "told", ttl=30):
                await client.delete(owner_key("told"))  # an operator, a failover
                raise KeyError("the job's own error")
    finally:
        stop()
    assert any("lost" in note for note in raised.value.__notes__)  # the error propagates
    ours = [(e.event, type(e.error)) for e in events if e.event.startswith("leader_")]
    assert ours == [("leader_elected", type(None)), ("leader_deposed", LockLost)]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"identity": ""}, ValueError),
        ({"identity": "x" * 1025}, ValueError),
        ({"identity": 7}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"replicas": -1}, ValueError),
        ({"prefix": "a{b"}, ValueError),
    ],
)
def test_bad_input_is_refused_before_any_command(options: dict[str, Any], error: type) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)  # any command would fail
    with pytest.raises(error):
        Election(unreachable, "scheduler", **options)
    with pytest.raises(TypeError):
        Election(unreachable, 7)  # type: ignore[arg-type]


async def test_a_bad_watch_interval_is_refused_before_any_command() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="interval"):
        await anext(Election(unreachable, "x").watch(interval=0))


async def test_cancelled_campaigns_leave_nothing_held(client: redis.Redis) -> None:
    class Campaign:
        """An election's term as an acquire/release pair, for the storm helper."""

        def __init__(self) -> None:
            self.election = Election(client, "storm", identity="me", ttl=5)

        async def acquire(self) -> bool:
            await self.election.__aenter__()
            return True

        async def release(self) -> None:
            await self.election.resign()  # from another task than the campaign's

    async def nothing_held() -> None:
        await asyncio.sleep(0.01)  # a clean-up in the background has run
        assert not await client.exists(owner_key("storm"))

    cancelled, elected = await cancel_at_random_turns(Campaign, seed=13, after_cancel=nothing_held)
    assert cancelled >= 20
    assert elected >= 20


@pytest.mark.slow
def test_processes_never_lead_at_once_and_terms_increase(redis_url: str, tmp_path: Path) -> None:
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(3)]
    command = [sys.executable, str(HERE / "election_worker.py"), redis_url, "elected", "15"]
    workers = [subprocess.Popen([*command, str(out)]) for out in outputs]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    assert len(records) == 3 * 15
    assert overlaps(records) == []  # at most one leader at any instant
    terms = [record["term"] for record in sorted(records, key=lambda r: r["start"])]
    assert terms == sorted(set(terms))  # strictly increasing
    assert len({record["identity"] for record in records}) == 3


@pytest.mark.slow
async def test_a_killed_leader_is_replaced_within_its_ttl(
    redis_url: str, make_client: Callable[..., redis.Redis]
) -> None:
    ttl = 1.0
    leader = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "election_worker.py"), redis_url, "killed", "hold", str(ttl),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert leader.stdout is not None
    assert (await asyncio.wait_for(leader.stdout.readline(), 30)).strip() == b"leading"
    election = Election(make_client(), "killed", identity="survivor", ttl=5)
    before = await election.leader()
    assert before is not None
    assert before.identity == f"holder:{leader.pid}"
    os.kill(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.wait_for(leader.wait(), 10)
    async with election as term:
        took = time.monotonic() - killed
        info = await election.leader()
        assert info is not None
        assert info.identity == "survivor"
        assert before.term is not None
        assert term.fencing_token > before.term
    print(f"a new leader {took:.2f} s after the kill (ttl {ttl} s)")
    assert ttl * 0.5 < took < ttl + 0.5  # not before the lease ran out; soon after


async def test_cancelling_run_steps_down_at_once(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    first = Election(client, "cancelled-run", identity="first", ttl=10)
    second = Election(make_client(), "cancelled-run", identity="second", ttl=10)
    running = await leading_in_a_task(first)

    async def campaign() -> float:
        async with second:
            return time.monotonic()

    campaigning = asyncio.create_task(campaign())
    await asyncio.sleep(0.3)
    assert not campaigning.done()
    cancelled = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    took = await asyncio.wait_for(campaigning, 5) - cancelled
    assert took < 0.5  # released at the step-down, not after the TTL (10 s)


async def test_a_resign_from_the_body_does_not_swallow_a_later_cancellation(
    client: redis.Redis,
) -> None:
    election = Election(client, "inner-resign", identity="me", ttl=10)
    resigned = asyncio.Event()

    async def lead() -> None:
        await election.resign()  # steps down, and goes on without leading
        assert not election.leading
        resigned.set()
        await asyncio.sleep(60)

    running = asyncio.create_task(election.run(lead))
    await asyncio.wait_for(resigned.wait(), 5)
    assert await election.leader() is None
    running.cancel()  # not resign()'s: it must propagate
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_lock_lost_inside_the_leaders_work_is_its_error_not_a_lost_term(
    client: redis.Redis,
) -> None:
    election = Election(client, "outer", identity="me", ttl=5)

    async def lead() -> None:
        async with asynclock.Mutex(client, "inner", ttl=1.5):
            await client.delete(owner_key("inner"))
            await asyncio.sleep(5)  # cancelled by the inner lock's loss

    with pytest.raises(LockLost, match="inner"):
        await asyncio.wait_for(election.run(lead), 10)
    assert await election.leader() is None  # the term ended with the error


async def test_one_election_object_campaigns_in_one_task_at_a_time(client: redis.Redis) -> None:
    election = Election(client, "shared", identity="me", ttl=5)
    running = await leading_in_a_task(election)
    with pytest.raises(RuntimeError, match="another task"):
        await election.__aenter__()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    async with election:  # free again once that task's term ended
        assert election.leading


async def test_watch_reads_at_its_interval_on_a_pool_of_one_connection(redis_url: str) -> None:
    single = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=1, timeout=5))  # fmt: skip
    leader = Election(single, "single", identity="only", ttl=5)
    watching = Election(single, "single").watch(interval=0.05)
    try:
        assert await anext(watching) is None
        async with leader:
            info = await asyncio.wait_for(anext(watching), 5)
            assert info is not None
            assert info.identity == "only"
    finally:
        await watching.aclose()
        await single.aclose()
