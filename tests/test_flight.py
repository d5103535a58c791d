"""``SingleFlight`` on the real server: one run per flight, its outcome for every caller
that asked meanwhile, and what happens when the leader fails, is cancelled, loses its
lease or is killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from asynclock import FlightFailed, LockLost, LockNotAcquired, SingleFlight, _flight

from .conftest import cancel_at_random_turns, owner_key

HERE = Path(__file__).parent


async def following(client: redis.Redis, name: str, processes: int) -> None:
    """Wait until ``processes`` clients follow flight ``name`` (at most 10 s): each has
    found it under way and subscribed to its outcome."""
    channel = f"asynclock:flight:{{{name}}}"
    deadline = time.monotonic() + 10
    while (await client.pubsub_numsub(channel))[0][1] < processes:
        assert time.monotonic() < deadline, f"fewer than {processes} followers"
        await asyncio.sleep(0.01)


async def followed(client: redis.Redis, name: str, processes: int, go: asyncio.Event) -> None:
    """Set ``go`` once ``processes`` clients follow flight ``name`` (or it failed to)."""
    try:
        await following(client, name, processes)
    finally:
        go.set()


class Job:
    """A job that counts its runs and returns ``(label, run number)`` after ``seconds``,
    or once ``until`` is set if given (so that its followers surely came meanwhile)."""

    def __init__(self, label: str, seconds: float = 0.1, until: asyncio.Event | None = None):
        self.label = label
        self.seconds = seconds
        self.until = until
        self.runs = 0
        self.started = asyncio.Event()

    async def __call__(self) -> list[Any]:
        self.runs += 1
        self.started.set()
        if self.until is None:
            await asyncio.sleep(self.seconds)
        else:
            await self.until.wait()
        return [self.label, self.runs]


async def test_concurrent_callers_of_two_clients_share_one_run(
    make_client: Callable[..., redis.Redis],
) -> None:
    clients = [make_client(), make_client()]  # two processes, as far as sharing goes
    go = asyncio.Event()
    job = Job("one", until=go)
    values, _ = await asyncio.gather(
        asyncio.gather(
            *(SingleFlight(c, "report", ttl=5).run(job) for c in clients for _ in range(32))
        ),
        followed(clients[0], "report", 1, go),
    )
    assert job.runs == 1
    assert values == [["one", 1]] * 64
    # The flight is over: the next caller runs the job again.
    assert await SingleFlight(clients[0], "report").run(job) == ["one", 2]
    assert _flight._flights[clients[0]] == {}  # nothing left of the flights here


async def test_callers_of_one_process_share_one_wait_on_the_server(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    go = asyncio.Event()
    job = Job("shared", until=go)
    leading = asyncio.create_task(SingleFlight(make_client(), "report").run(job))
    await job.started.wait()
    follower_client = make_client()
    before = await client.info("commandstats")
    values, _ = await asyncio.gather(
        asyncio.gather(*(SingleFlight(follower_client, "report").run(job) for _ in range(32))),
        followed(client, "report", 1, go),
    )
    after = await client.info("commandstats")
    assert values == [["shared", 1]] * 32
    assert await leading == ["shared", 1]
    # The 32 callers' looks: one task's, a few in all (the leader's landing and release
    # among these scripts), not one each.
    scripts = after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"]
    assert scripts <= 8, scripts


async def test_a_job_outliving_its_ttl_keeps_its_lease_and_runs_once(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    job = Job("long", seconds=1.5)  # three times the lease
    leading = asyncio.create_task(SingleFlight(client, "report", ttl=0.5).run(job))
    await job.started.wait()
    follower = SingleFlight(make_client(), "report", ttl=0.5)
    assert await follower.run(job) == ["long", 1]  # auto-extended: nobody took over
    assert await leading == ["long", 1]
    assert job.runs == 1


async def test_an_error_reaches_the_followers_as_flight_failed(
    make_client: Callable[..., redis.Redis],
) -> None:
    leader_client, follower_client = make_client(), make_client()
    started, go = asyncio.Event(), asyncio.Event()

    async def failing() -> None:
        started.set()
        await go.wait()
        raise KeyError("no such report")

    async def follow() -> None:
        await started.wait()
        await SingleFlight(follower_client, "report").run(failing)

    led, failed, _ = await asyncio.gather(
        SingleFlight(leader_client, "report").run(failing),
        follow(),
        followed(leader_client, "report", 1, go),
        return_exceptions=True,
    )
    assert isinstance(led, KeyError)  # the leader's own callers get the error itself
    assert isinstance(failed, FlightFailed)
    assert (failed.name, failed.error_type) == ("report", "KeyError")
    assert failed.message == "'no such report'"


async def test_a_late_arrival_runs_the_job_again_unless_the_value_is_kept(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    job = Job("v", seconds=0)
    assert await SingleFlight(client, "plain").run(job) == ["v", 1]
    assert await SingleFlight(make_client(), "plain").run(job) == ["v", 2]

    kept = Job("k", seconds=0)
    assert await SingleFlight(client, "kept", keep_for=0.5).run(kept) == ["k", 1]
    assert await SingleFlight(make_client(), "kept", keep_for=0.5).run(kept) == ["k", 1]
    await asyncio.sleep(0.6)
    assert await SingleFlight(make_client(), "kept", keep_for=0.5).run(kept) == ["k", 2]


async def test_errors_are_never_kept_for_late_arrivals(client: redis.Redis) -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("down")

    flight = SingleFlight(client, "cached", keep_for=30)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await flight.run(failing)
    assert calls == 2


async def test_a_caller_arriving_after_the_landing_runs_the_job_again_at_once(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    # The outcome lands before the lease is released. A caller in between found the
    # flight over (its outcome computed before it came): it runs the job itself, as
    # soon as the lease is released, not at its next re-check.
    leader = SingleFlight(client, "report")
    assert await leader._mutex.acquire()
    held = leader._mutex.lease
    assert held is not None
    waiter = asyncio.create_task(SingleFlight(make_client(), "report").run(Job("waited")))
    await following(client, "report", 1)
    await leader._land(held, leader._encode("landed"), keep=False)
    late = asyncio.create_task(SingleFlight(make_client(), "report").run(Job("late", 0)))
    await following(client, "report", 2)
    await asyncio.sleep(0.05)  # looking again while the leader releases
    released = time.monotonic()
    await leader._mutex.release()
    assert await asyncio.wait_for(waiter, 5) == "landed"  # it was waiting for that one
    assert await asyncio.wait_for(late, 5) == ["late", 1]
    assert time.monotonic() - released < 0.3


async def test_a_caller_coming_as_the_last_one_leaves_gets_a_flight_of_its_own(
    client: redis.Redis,
) -> None:
    flight = SingleFlight(client, "report")
    first = asyncio.create_task(flight.run(Job("first", 0.3)))
    await asyncio.sleep(0.1)
    first.cancel()  # the flight winds down: its lease is released in the background
    await asyncio.sleep(0)
    second = asyncio.create_task(flight.run(Job("second", 0)))
    assert await asyncio.wait_for(second, 5) == ["second", 1]  # not CancelledError
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_lease_lost_after_the_landing_fails_no_caller(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    land = SingleFlight._land

    async def land_then_lose(self: SingleFlight, *args: Any, **kwargs: Any) -> None:
        await land(self, *args, **kwargs)
        await client.delete(owner_key("report"))  # lost after landing (an operator)

    monkeypatch.setattr(SingleFlight, "_land", land_then_lose)
    assert await SingleFlight(client, "report").run(Job("landed", 0)) == ["landed", 1]
    assert "after its outcome landed" in caplog.text


async def test_followers_of_a_client_decoding_responses_get_the_value(redis_url: str) -> None:
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    try:
        go = asyncio.Event()
        job = Job("text", until=go)
        values, _ = await asyncio.gather(
            asyncio.gather(*(SingleFlight(c, "report").run(job) for c in clients)),
            followed(clients[0], "report", 1, go),
        )
        assert values == [["text", 1]] * 2
    finally:
        for c in clients:
            await c.aclose()


async def test_a_flight_landed_between_a_look_and_the_lease_is_taken_not_run_again(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    slow = SingleFlight(client, "report")
    kind, floor, _ = await slow._look("")
    assert kind == 0  # nobody leads: this caller would lead...
    # ... but another takes the lease, runs, lands and releases first.
    assert await SingleFlight(make_client(), "report").run(Job("other", 0)) == ["other", 1]
    mine = Job("mine", 0)
    assert await slow._lead(floor, mine, (), {}) == ["other", 1]
    assert mine.runs == 0
    assert not await client.exists(owner_key("report"))


async def test_a_follower_gives_up_after_its_timeout(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    job = Job("slow", seconds=1.5)
    leading = asyncio.create_task(SingleFlight(client, "report").run(job))
    await job.started.wait()
    started = time.monotonic()
    with pytest.raises(LockNotAcquired) as raised:
        await SingleFlight(make_client(), "report", timeout=0.3).run(job)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 1.2
    assert 0.3 <= raised.value.waited < 1.2
    assert await leading == ["slow", 1]


async def test_a_cancelled_leader_hands_the_flight_to_a_follower_at_once(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    first = Job("first", seconds=30)
    leading = asyncio.create_task(SingleFlight(client, "report", ttl=30).run(first))
    await first.started.wait()
    second = Job("second", seconds=0)
    following = asyncio.create_task(SingleFlight(make_client(), "report", ttl=30).run(second))
    await asyncio.sleep(0.1)
    cancelled = time.monotonic()
    leading.cancel()
    assert await asyncio.wait_for(following, 5) == ["second", 1]
    took = time.monotonic() - cancelled
    print(f"the follower led {took * 1000:.1f} ms after the leader was cancelled")
    assert took < 0.5  # woken by the release, not after the 30 s lease
    with pytest.raises(asyncio.CancelledError):
        await leading


async def test_a_leader_that_loses_its_lease_raises_lock_lost_and_a_follower_runs_again(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    first = Job("first", seconds=30)
    leading = asyncio.create_task(SingleFlight(client, "report", ttl=1).run(first))
    await first.started.wait()
    second = Job("second", seconds=0.05)
    following = asyncio.create_task(SingleFlight(make_client(), "report", ttl=1).run(second))
    await asyncio.sleep(0.05)
    await client.delete(owner_key("report"))  # the lease is gone (an operator, a failover)
    with pytest.raises(LockLost):
        await asyncio.wait_for(leading, 5)  # the watchdog saw it: the job was cancelled
    assert await asyncio.wait_for(following, 5) == ["second", 1]
    assert first.runs == 1


async def test_only_the_last_caller_to_leave_cancels_the_job(client: redis.Redis) -> None:
    job = Job("shared", seconds=0.3)
    flight = SingleFlight(client, "report")
    impatient = asyncio.create_task(flight.run(job))
    patient = asyncio.create_task(flight.run(job))
    await job.started.wait()
    impatient.cancel()
    assert await patient == ["shared", 1]  # the job went on for the one still waiting
    with pytest.raises(asyncio.CancelledError):
        await impatient

    alone = Job("alone", seconds=30)
    task = asyncio.create_task(flight.run(alone))
    await alone.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await client.exists(owner_key("report"))  # its lease released at once


async def test_a_value_too_large_fails_the_flight_for_everyone(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    go = asyncio.Event()
    job = Job("x" * 100, until=go)
    leader = asyncio.create_task(SingleFlight(client, "big", max_outcome=64).run(job))
    await job.started.wait()
    follower = SingleFlight(make_client(), "big", max_outcome=64)
    gate = asyncio.create_task(followed(client, "big", 1, go))
    with pytest.raises(FlightFailed, match=r"ValueError: .*more than max_outcome=64"):
        await follower.run(job)
    await gate
    with pytest.raises(ValueError, match="more than max_outcome=64"):
        await leader
    assert job.runs == 1


async def test_a_value_the_serializer_cannot_encode_fails_the_flight(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    started, go = asyncio.Event(), asyncio.Event()

    async def a_set() -> set[int]:
        started.set()
        await go.wait()
        return {1, 2}

    leader = asyncio.create_task(SingleFlight(client, "set").run(a_set))
    await started.wait()
    gate = asyncio.create_task(followed(client, "set", 1, go))
    with pytest.raises(FlightFailed) as raised:
        await SingleFlight(make_client(), "set").run(a_set)
    await gate
    assert raised.value.error_type == "TypeError"
    with pytest.raises(TypeError):
        await leader


async def test_a_serializer_of_ones_own_carries_the_value(
    client: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    class Sets:
        """Sets of ints as JSON lists."""

        @staticmethod
        def dumps(value: set[int]) -> bytes:
            return json.dumps(sorted(value)).encode()

        @staticmethod
        def loads(data: bytes) -> set[int]:
            return set(json.loads(data))

    started, go = asyncio.Event(), asyncio.Event()

    async def a_set() -> set[int]:
        started.set()
        await go.wait()
        return {3, 1, 2}

    leader = asyncio.create_task(SingleFlight(client, "set", serializer=Sets()).run(a_set))
    await started.wait()
    gate = asyncio.create_task(followed(client, "set", 1, go))
    assert await SingleFlight(make_client(), "set", serializer=Sets()).run(a_set) == {1, 2, 3}
    await gate
    assert await leader == {1, 2, 3}


async def test_followers_poll_on_a_pool_of_one_connection(redis_url: str) -> None:
    leader_client = redis.Redis.from_url(redis_url)
    follower_client = redis.Redis.from_url(redis_url, max_connections=1)  # no pub/sub
    try:
        job = Job("polled", seconds=1.0)  # long enough for the follower to come
        leading = asyncio.create_task(SingleFlight(leader_client, "report").run(job))
        await job.started.wait()
        assert await SingleFlight(follower_client, "report").run(job) == ["polled", 1]
        assert await leading == ["polled", 1]
    finally:
        await leader_client.aclose()
        await follower_client.aclose()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"timeout": 0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"keep_for": -1}, ValueError),
        ({"keep_for": True}, TypeError),
        ({"max_outcome": 0}, ValueError),
        ({"max_outcome": 2**30}, ValueError),
        ({"max_outcome": 1.5}, TypeError),
        ({"serializer": object()}, TypeError),
        ({"serializer": "json"}, TypeError),
        ({"replicas": -1}, ValueError),
        ({"prefix": "a{b"}, ValueError),
    ],
)
def test_bad_input_is_refused_before_any_command(options: dict[str, Any], error: type) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)  # any command would fail
    with pytest.raises(error):
        SingleFlight(unreachable, "report", **options)
    with pytest.raises(TypeError):
        SingleFlight(unreachable, 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        SingleFlight(unreachable, "")


async def test_a_job_that_is_not_callable_is_refused_before_any_command() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(TypeError, match="fn must be callable"):
        await SingleFlight(unreachable, "report").run("build")  # type: ignore[arg-type]


async def test_cancelled_callers_leave_nothing_held_and_no_flight_behind(
    client: redis.Redis,
) -> None:
    class Asking:
        """One call of a flight as an acquire/release pair, for the storm helper."""

        async def acquire(self) -> bool:
            return bool(await SingleFlight(client, "storm", ttl=5).run(Job("storm", 0)))

        async def release(self) -> None:
            pass

    async def nothing_left() -> None:
        await asyncio.sleep(0.01)
        assert not await client.exists(owner_key("storm"))
        assert not _flight._flights.get(client)

    cancelled, completed = await cancel_at_random_turns(Asking, seed=17, after_cancel=nothing_left)
    assert cancelled >= 20
    assert completed >= 20


@pytest.mark.slow
def test_processes_asking_at_once_run_each_flight_once_and_share_its_value(
    redis_url: str, tmp_path: Path
) -> None:
    processes, callers, rounds = 3, 8, 4
    outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(processes)]
    total = str(processes * callers)
    command = [sys.executable, str(HERE / "flight_worker.py"), redis_url, str(rounds), str(callers)]
    workers = [subprocess.Popen([*command, total, str(out)]) for out in outputs]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    assert len(records) == processes * callers * rounds
    values = {r["round"]: set() for r in records}  # type: dict[int, set[str]]
    for record in records:
        values[record["round"]].add(json.dumps(record["value"], sort_keys=True))
    assert all(len(seen) == 1 for seen in values.values())  # one value per flight...
    client = redis.Redis.from_url(redis_url)

    async def runs() -> list[int]:
        try:
            return [int(await client.get(f"runs:{n}") or 0) for n in range(rounds)]
        finally:
            await client.aclose()

    assert asyncio.run(runs()) == [1] * rounds  # ... from one run
    leaders = Counter(json.loads(next(iter(seen)))["by"] for seen in values.values())
    print(f"{rounds} flights, {len(records)} callers; runs by process: {dict(leaders)}")


@pytest.mark.slow
async def test_a_killed_leader_is_replaced_by_one_follower_within_its_ttl(
    redis_url: str, make_client: Callable[..., redis.Redis]
) -> None:
    ttl = 1.0
    leader = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "flight_worker.py"), redis_url, "lead", "killed", str(ttl),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert leader.stdout is not None
    assert (await asyncio.wait_for(leader.stdout.readline(), 30)).strip() == b"running"
    job = Job("survivor", seconds=0.1)
    clients = [make_client(), make_client()]
    followers = [
        asyncio.create_task(SingleFlight(c, "killed", ttl=5, timeout=30).run(job))
        for c in clients
        for _ in range(8)
    ]
    await asyncio.sleep(0.2)
    assert not any(f.done() for f in followers)  # they follow the leader at work
    os.kill(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.wait_for(leader.wait(), 10)
    values = await asyncio.wait_for(asyncio.gather(*followers), 30)
    took = time.monotonic() - killed
    assert job.runs == 1  # exactly one follower ran it again
    assert values == [["survivor", 1]] * 16
    print(f"the followers had the value {took:.2f} s after the kill (ttl {ttl} s)")
    assert ttl * 0.5 < took < ttl + 1.0  # not before the lease ran out; soon after
