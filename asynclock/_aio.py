"""asyncio helpers of the lifecycle: background tasks, uncancellable work, bounded waits.

Nothing here knows about locks; every other module of the lifecycle may use it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import weakref
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

_log = logging.getLogger("asynclock")

#: The background tasks still running, kept referenced until they are done (the loop
#: holds only weak references to tasks).
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """Run ``coro`` in the background, keeping a reference until it is done.

    Whatever it raises (a cancellation aside) is logged once, with ``what`` it was
    doing, never left to asyncio's "exception was never retrieved": a background
    task of the library may fail, but must not crash or flood the application.
    """
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(functools.partial(_finished, what))
    return task


def _finished(what: str, task: asyncio.Task[None]) -> None:
    _background.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        _log.error("%s failed: %r", what, error, exc_info=error)


async def complete_despite_cancel(aw: Coroutine[Any, Any, _T]) -> _T:
    """Run ``aw`` to its end even if the caller is cancelled meanwhile.

    A release or a clean-up must not be cut off halfway by the cancellation that
    triggered it. The work runs in its own task; a cancellation of the caller is
    remembered and raised once the work is done, so the caller still ends cancelled.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled, not only the caller
                raise
            cancelled = True
            continue
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError from None
            raise
        break
    if cancelled:
        raise asyncio.CancelledError
    return result


# The innermost `within` the current task runs under, as (task, deadline): a call
# below it with a timer of its own that would not fire first (a command's socket
# timeout) can do without, on the path every release takes. A context variable, so
# that a task abandoned inside a `within` leaves nothing behind. The task is kept
# beside the deadline because a task started inside a `within` copies the context
# but not the timer, which cancels only the task that set it; and kept weakly,
# because whatever the loop schedules meanwhile keeps a copy of the context for as
# long as it lives (a connection made inside a `within` keeps its reader's for the
# connection's life), which must not keep the task and all it holds alive.
_bound: contextvars.ContextVar[tuple[weakref.ref[asyncio.Task[Any]], float] | None] = (
    contextvars.ContextVar("asynclock_within", default=None)
)


async def within(aw: Awaitable[_T], timeout: float) -> _T:
    """Await ``aw``, cancelling it after ``timeout`` seconds with ``TimeoutError``.

    ``asyncio.timeout`` does the same with more bookkeeping; this sits on every
    release, where its cost showed in the uncontended benchmark. Same cancellation
    counting: a cancel of our own is taken back, one from elsewhere propagates.
    """
    task = asyncio.current_task()
    assert task is not None
    # Cancellations already pending at entry (a release in the exit of a cancelled
    # body) are not ours: the time ran out if ours is the only one added since.
    pending = task.cancelling()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    # The task's loop, not get_running_loop(): Python 3.11's checks the process id, a
    # system call, on a path every release takes.
    loop = task.get_loop()
    deadline = loop.time() + timeout
    outer = _bound.get()
    if outer is not None and outer[0]() is task:
        deadline_set = _bound.set((outer[0], min(deadline, outer[1])))
    else:
        deadline_set = _bound.set((weakref.ref(task), deadline))
    handle = loop.call_at(deadline, expire)
    try:
        return await aw
    except asyncio.CancelledError:
        if fired:
            fired = False
            if task.uncancel() <= pending:  # ours alone: the time ran out
                raise TimeoutError from None
        raise
    finally:
        handle.cancel()
        _bound.reset(deadline_set)
        if fired:  # expired just as the work finished: take our cancel back
            task.uncancel()


def bounded_within(seconds: float) -> bool:
    """Whether the current task runs under a :func:`within` that ends within
    ``seconds`` from now: its timer then cuts off anything that would take longer.

    Not once its time is up, nor in its last moments: a timer that fired, its
    cancellation swallowed by a call below (a client library was seen to), cuts off
    nothing more, and a timer may fire a little early (uvloop's, by up to a
    millisecond).
    """
    bound = _bound.get()
    if bound is None:
        return False
    task = bound[0]()
    if task is None or task is not asyncio.current_task():
        return False
    now = task.get_loop().time()
    return now + _LAST_MOMENTS < bound[1] <= now + seconds


# How close to its end a `within` no longer counts as a bound (see bounded_within).
_LAST_MOMENTS = 0.01


async def background_done(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the background tasks spawned so far; return
    whether none is left running."""
    if _background:
        await asyncio.wait(set(_background), timeout=timeout)
    return not _background


async def wait_done(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` to finish, whatever its outcome (reported by its own code)."""
    await asyncio.wait([future])
