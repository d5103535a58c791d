"""The lifecycle's decisions without I/O, and its cancellation helper."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref

import pytest

from asynclock._aio import bounded_within as _bounded_within
from asynclock._aio import complete_despite_cancel as _complete_despite_cancel
from asynclock._aio import within as _within
from asynclock._timing import LeasePolicy, drift_allowance, extension_retry_pause, lease_deadline


def test_deadline_is_measured_from_the_send_less_drift() -> None:
    assert drift_allowance(30.0) == pytest.approx(0.302)
    assert lease_deadline(100.0, 30.0) == pytest.approx(100.0 + 30.0 - 0.302)
    # Always strictly inside the server's expiry, even for the shortest lease.
    assert lease_deadline(0.0, 0.01) < 0.01


def test_extension_retry_pause_grows_but_stays_under_half_an_interval() -> None:
    pauses = [extension_retry_pause(1.0, n) for n in range(1, 12)]
    assert all(0 < pause <= 0.5 for pause in pauses)
    assert max(pauses[-3:]) > max(pauses[:1])


def test_policy_defaults_extend_every_third_of_the_ttl() -> None:
    policy = LeasePolicy.build(30.0, None, True, None, None)
    assert policy.extend_interval == pytest.approx(10.0)
    assert policy.ttl_ms == 30_000
    assert LeasePolicy.build(0.0105, None, True, None, None).ttl_ms == 11  # rounded up


@pytest.mark.parametrize(
    ("ttl", "interval", "error"),
    [
        (0, None, ValueError),
        (-1, None, ValueError),
        (math.inf, None, ValueError),
        (math.nan, None, ValueError),
        (0.001, None, ValueError),
        ("30", None, TypeError),
        (True, None, TypeError),
        (10, 10, ValueError),
        (10, 20, ValueError),
        (10, 0, ValueError),
        (10, math.nan, ValueError),
    ],
)
def test_policy_rejects_bad_timing(ttl: object, interval: object, error: type) -> None:
    with pytest.raises(error):
        LeasePolicy.build(ttl, interval, True, None, None)


async def test_complete_despite_cancel_finishes_the_work_then_reraises() -> None:
    finished = asyncio.Event()

    async def work() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "done"

    caller = asyncio.create_task(_complete_despite_cancel(work()))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # a second cancellation does not cut it off either
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_complete_despite_cancel_returns_the_result() -> None:
    async def work() -> int:
        return 7

    assert await _complete_despite_cancel(work()) == 7


async def test_within_times_out_with_timeout_error_and_leaves_no_cancel_behind() -> None:
    with pytest.raises(TimeoutError):
        await _within(asyncio.sleep(10), 0.02)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # no stray cancellation arrives later
    assert await _within(asyncio.sleep(0, result="done"), 1.0) == "done"


async def test_within_lets_a_cancellation_from_elsewhere_through() -> None:
    async def victim() -> None:
        await _within(asyncio.sleep(10), 5.0)

    task = asyncio.create_task(victim())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_within_inside_an_outer_timeout_reports_the_outer_one() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02) as outer:
            await _within(asyncio.sleep(10), 5.0)
    assert outer.expired()


async def test_within_entered_while_cancelling_still_reports_its_own_timeout() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(1)  # a cancelled body, as in a lock's exit
    assert task.cancelling() == 1
    with pytest.raises(TimeoutError):
        await _within(asyncio.sleep(10), 0.02)
    assert task.cancelling() == 1  # the earlier cancellation is still pending
    task.uncancel()


async def test_within_tells_calls_below_it_how_long_they_have() -> None:
    assert not _bounded_within(60.0)  # outside any within
    seen: list[bool] = []

    async def probe() -> None:
        seen.extend([_bounded_within(60.0), _bounded_within(0.5)])
        await _within(inner(), 30.0)  # an inner limit does not extend the outer one
        seen.append(_bounded_within(3.0))

    async def inner() -> None:
        seen.extend([_bounded_within(2.5), _bounded_within(1.0)])

    await _within(probe(), 2.0)
    assert seen == [True, False, True, False, True]
    assert not _bounded_within(60.0)  # nothing left behind
    # Another task does not run under this one's limit.
    assert await _within(asyncio.ensure_future(_probe_elsewhere()), 2.0) is False


async def _probe_elsewhere() -> bool:
    return _bounded_within(60.0)


async def test_a_within_whose_time_is_up_bounds_nothing_more() -> None:
    # A call below swallowed the cancellation of the within's timer (a client library
    # was seen to): what runs after it must keep timers of its own.
    seen: list[bool] = []

    async def swallows() -> None:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
        seen.append(_bounded_within(60.0))

    await _within(swallows(), 0.02)
    assert seen == [False]


async def test_what_the_loop_keeps_from_inside_a_within_keeps_no_task_alive() -> None:
    # A callback scheduled inside a within keeps a copy of the context for as long as
    # it lives (a connection made there keeps its reader's for the connection's life):
    # the task that ran the within must still be collected once done.
    loop = asyncio.get_running_loop()
    kept: list[asyncio.TimerHandle] = []

    async def schedule() -> None:
        kept.append(loop.call_later(3600, lambda: None))

    async def run() -> None:
        await _within(schedule(), 5.0)

    task = asyncio.create_task(run())
    await task
    gone = weakref.ref(task)
    del task
    await asyncio.sleep(0)  # the loop drops the handle that woke us with the task
    gc.collect()
    try:
        assert gone() is None
    finally:
        kept[0].cancel()
