"""One holding of a lock: :class:`Lease`, its deadline, its watchdog, its loss and release.

A lease is made by an acquisition (``_acquire.py``) once the store holds its token,
and lives until it is released or lost. Its state is one :class:`LeaseState`;
the watchdog beside the body extends it, and declares it lost the moment its
deadline (``_timing.py``) passes without a successful extension: the body that holds
it is then cancelled, and ``LockLost`` raised from its ``async with``
(:meth:`Lease.exit_body`).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import sys
import time
import warnings
import weakref
from collections.abc import Awaitable
from typing import Any, Final

from . import _events
from ._aio import complete_despite_cancel, spawn, wait_done
from ._errors import LockBackendError, LockLost, LockNotOwned
from ._queue import queue_for
from ._resource import (
    BACKEND_ERRORS,
    Resource,
    clean_up,
    release_by_token,
    shorten_by_token,
)
from ._scripts import acknowledged_by
from ._timing import (
    LeasePolicy,
    OnLost,
    bounded_release_timeout,
    extension_retry_pause,
    lease_deadline,
)

_log = logging.getLogger("asynclock")

# Python 3.11 only: how often, and how many times at most, the cancellation of a body
# whose lease was lost is repeated (see Lease._cancel_holder).
_EAGER_REPEATED_CANCELS: Final = 20
_REPEATED_CANCEL_INTERVAL: Final = 0.005
_MAX_REPEATED_CANCELS: Final = 220


class LeaseState(enum.Enum):
    """Where a lease is in its life: held, then released or lost, never back."""

    HELD = "held"
    LOST = "lost"
    RELEASED = "released"


class Lease:
    """One holding of a lock: its token, fencing tokens, deadline and watchdog.

    ``async with lock as lease`` gives it to the body. A lease belongs to the task
    that acquired it; its token never leaves this object, so tasks sharing a lock
    object cannot release each other's holdings.

    :ivar token: the random owner token stored in Redis
    :ivar fencing_tokens: the fencing token of each name, strictly increasing per
        name across successive holders
    :ivar acquired_at: when the acquire command was sent, on ``time.monotonic()``
    :ivar extensions: how many extensions have succeeded
    """

    __slots__ = (
        "__weakref__",
        "_cancels",
        "_cleanup",
        "_client",
        "_deadline",
        "_exiting",
        "_extending",
        "_failures",
        "_hold_limit",
        "_holder",
        "_loss",
        "_next_extension",
        "_policy",
        "_resource",
        "_server_expiry",
        "_started",
        "_state",
        "_timer",
        "acquired_at",
        "extensions",
        "fencing_tokens",
        "primitive",
        "template",
        "token",
    )

    def __init__(
        self,
        resource: Resource,
        client: Any,
        policy: LeasePolicy,
        token: str,
        fencing_tokens: tuple[int, ...],
        sent_at: float,
        replied_at: float,
    ) -> None:
        self._resource = resource
        self._client = client
        self._policy = policy
        self.token = token
        self.fencing_tokens = dict(zip(resource.names, fencing_tokens, strict=True))
        self.acquired_at = sent_at
        self.extensions = 0
        self._deadline = lease_deadline(sent_at, policy.ttl)
        # The latest moment the server may still hold the key if nothing extends it.
        self._server_expiry = replied_at + policy.ttl
        self._hold_limit = None if policy.max_hold is None else sent_at + policy.max_hold
        self._state = LeaseState.HELD
        self._started = False
        self._loss: LockLost | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._extending: asyncio.Task[None] | None = None
        self._next_extension = sent_at + policy.extend_interval
        self._failures = 0
        self._cleanup: asyncio.Future[None] | None = None
        self._holder: asyncio.Task[Any] | None = None
        self._exiting = False
        self._cancels = 0
        # What events about the lease say of its lock (set by the lock object).
        self.primitive = ""
        self.template: str | None = None

    def __repr__(self) -> str:
        return (
            f"<Lease {self._resource.description!r} {self._state.value} "
            f"fencing_tokens={self.fencing_tokens} remaining={self.remaining:.3f}s>"
        )

    def __del__(self) -> None:
        # Unreachable while held: acquired, never released, and forgotten. Its watchdog
        # stops here, so the name frees within its TTL instead of being extended for
        # as long as the process lives; say which lock, as an unclosed file does.
        if self._state is LeaseState.HELD and self._started:
            timer = self._timer
            if timer is not None:
                timer.cancel()
            message = (
                f"lock {self.name!r} was acquired and never released; it is no longer"
                " extended, and frees when its TTL runs out"
            )
            warnings.warn(message, ResourceWarning, stacklevel=1)
            _log.warning("%s", message)

    @property
    def name(self) -> str:
        """The lock's name (names joined with ``", "`` for a lock over several)."""
        return self._resource.description

    @property
    def fencing_token(self) -> int:
        """The fencing token (of the first name): pass it to storage that checks it."""
        return next(iter(self.fencing_tokens.values()))

    @property
    def deadline(self) -> float:
        """Until when, on ``time.monotonic()``, the lease certainly holds."""
        return self._deadline

    @property
    def remaining(self) -> float:
        """Seconds until the deadline, or 0 once it has passed or the lease ended."""
        if self._state is not LeaseState.HELD:
            return 0.0
        return max(0.0, self._deadline - time.monotonic())

    @property
    def owned(self) -> bool:
        """Whether the lease is held: not released, not lost, deadline not passed."""
        return self._state is LeaseState.HELD and time.monotonic() < self._deadline

    @property
    def lost(self) -> LockLost | None:
        """The ``LockLost`` error if the lease was lost, else ``None``."""
        return self._loss

    @property
    def ended(self) -> bool:
        """Whether the lease was released or lost (see :attr:`owned` for the deadline)."""
        return self._state is not LeaseState.HELD

    async def extend(self) -> None:
        """Reset the lease's TTL to the full ``ttl`` now.

        :raises LockNotOwned: the lease was released or lost, its deadline passed, or
            Redis no longer holds our token (then the lease counts as lost)
        :raises LockBackendError: Redis could not be reached; the lease is unchanged
            and the watchdog, if any, keeps trying until the deadline
        """
        self._check_held()
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline - sent):
                with acknowledged_by(self._policy.replica_wait):
                    ok = await self._resource.extend(self._client, self.token, self._policy.ttl_ms)
        except (TimeoutError, *BACKEND_ERRORS) as exc:
            raise LockBackendError(self.name, "extend", exc) from exc
        if not ok:
            self._lose("the token was gone when extending: the lease expired or was deleted")
        self._check_held()
        self._extended(sent)

    async def release(self) -> None:
        """Give the lock back; the release runs to its end even if cancelled.

        :raises LockNotOwned: the lease was lost (before or at the release) or was
            already released
        :raises LockBackendError: Redis could not be reached; the lease is given up
            all the same and expires on its own within ``ttl``
        """
        if self._state is LeaseState.RELEASED:
            raise LockNotOwned(self.name, "already released")
        if not await self._release():
            raise LockNotOwned(self.name, self._loss.reason if self._loss else "lost")

    # -- the lock object's side: start, guard the body, end the body -------------------
    # Called by the lock object that acquired the lease (``LeaseLock``), not by
    # application code.

    def start(self, waited: float | None = None, handed_over: bool = False) -> None:
        """Start the watchdog (extensions, the deadline) and announce the acquisition.

        Called once by the lock object that acquired the lease, with how long it waited
        and whether a release of its process handed it over; later calls do nothing.
        """
        if self._started:
            return
        self._started = True
        self._next_extension = self.acquired_at + self._policy.extend_interval
        self._arm()
        if _events.listening("lock_acquired"):
            _events.emit(
                self._event(
                    "lock_acquired", waited=waited, outcome="acquired", handed_over=handed_over
                )
            )

    def guard(self, body: asyncio.Task[Any]) -> None:
        """Cancel ``body`` if the lease is lost before the body's exit (``async with``)."""
        self._holder = body

    @property
    def guarding(self) -> bool:
        """Whether an ``async with`` body holds this lease (see :meth:`guard`)."""
        return self._holder is not None

    async def exit_body(self, body: asyncio.Task[Any], exc: BaseException | None) -> None:
        """End the ``async with`` body ``body`` that leaves with ``exc``: release.

        Then raise what the ``async with`` statement must raise: ``LockLost`` if the
        lease was lost (in place of the cancellation the loss caused, unless another
        cancellation is pending too), or the release's ``LockBackendError``; with an
        error of the body's own, nothing (it propagates, with notes about the loss or
        the failed release).
        """
        self._exiting = True  # from here on, a loss must not cancel the body
        ours_cancel_only = False
        if self._cancels:
            # Balance the cancel() calls of the loss; if no other cancellation is
            # pending, the CancelledError is ours to turn into LockLost.
            for _ in range(self._cancels):
                pending = body.uncancel()
            ours_cancel_only = pending == 0
        release_error: LockBackendError | None = None
        try:
            await self._release()
        except LockBackendError as error:
            release_error = error
        loss = self._loss
        if exc is None:
            if loss is not None:
                raise loss
            if release_error is not None:
                raise release_error
            return
        if isinstance(exc, asyncio.CancelledError):
            if release_error is not None:
                _log.warning("%s; the lease expires on its own within its TTL", release_error)
            if ours_cancel_only and loss is not None:
                raise loss from None
            return
        if loss is not None:
            exc.add_note(f"asynclock: {loss}")
        if release_error is not None:
            exc.add_note(f"asynclock: {release_error}")

    # -- internals ---------------------------------------------------------------------

    def _check_held(self) -> None:
        if self._state is LeaseState.HELD and time.monotonic() >= self._deadline:
            self._lose("the lease ran out before an extension succeeded")
        if self._state is LeaseState.LOST:
            assert self._loss is not None
            raise LockNotOwned(self.name, self._loss.reason)
        if self._state is LeaseState.RELEASED:
            raise LockNotOwned(self.name, "already released")

    def _extended(self, sent: float) -> None:
        self._deadline = max(self._deadline, lease_deadline(sent, self._policy.ttl))
        self._server_expiry = max(self._server_expiry, time.monotonic() + self._policy.ttl)
        self.extensions += 1
        if _events.listening("lock_extended"):
            _events.emit(self._event("lock_extended"))

    def _event(
        self, event: str, error: BaseException | None = None, **more: Any
    ) -> _events.LockEvent:
        """Build an event about this lease; ``duration`` is how long it has been held."""
        return _events.LockEvent(
            event=event,
            lock=self.name,
            key=self._resource.key,
            token=self.token,
            fencing_token=self.fencing_token,
            duration=time.monotonic() - self.acquired_at,
            error=error,
            at=_events.now(),
            primitive=self.primitive,
            template=self.template,
            **more,
        )

    # The watchdog is a timer, not a task: most leases are released long before their
    # first extension, and arming a timer costs far less than starting a task. Only
    # an extension that is due runs as a task. The timer holds the lease weakly: a
    # lease nobody can reach any more (acquired, never released, its lock object
    # dropped) is collected, and its watchdog stops with it (see __del__).

    def _arm(self) -> None:
        """Set the timer for the next thing to do: extend, or declare the lease lost."""
        wake = self._deadline
        if self._hold_limit is not None:
            wake = min(wake, self._hold_limit)
        if self._policy.auto_extend:
            wake = min(wake, self._next_extension)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            max(0.0, wake - time.monotonic()), _on_watchdog_timer, weakref.ref(self)
        )

    def _stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        extending = self._extending
        if extending is not None and extending is not asyncio.current_task():
            extending.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if self._state is not LeaseState.HELD:
            return
        now = time.monotonic()
        if now >= self._deadline:
            self._lose("the lease ran out before an extension succeeded")
        elif self._hold_limit is not None and now >= self._hold_limit:
            self._lose(f"held longer than max_hold ({self._policy.max_hold} s)")
        elif self._policy.auto_extend and now >= self._next_extension:
            self._extending = spawn(self._extend_in_background(), f"extending lock {self.name!r}")
        else:  # woke early, or the deadline moved (a manual extend)
            self._arm()

    async def _extend_in_background(self) -> None:
        """One extension by the watchdog; re-arms the timer when done.

        Transient errors (connection lost, timeout) are retried with a short backoff
        until the deadline; a reply saying the token is gone is a loss at once. The
        attempt itself is cut off at the deadline, so a hung server cannot delay the
        loss.
        """
        policy = self._policy
        sent = time.monotonic()
        cut_off = self._deadline
        if self._hold_limit is not None:
            cut_off = min(cut_off, self._hold_limit)
        try:
            async with asyncio.timeout(cut_off - sent):
                with acknowledged_by(policy.replica_wait):
                    ok = await self._resource.extend(self._client, self.token, policy.ttl_ms)
        except Exception as exc:  # any failure: retry until the deadline decides
            # Not only Redis errors: a cluster client's routing errors, or a bug, must
            # not end the watchdog silently, or the deadline would never be kept.
            self._failures += 1
            if _events.listening("lock_extend_failed"):
                _events.emit(self._event("lock_extend_failed", error=exc))
            self._next_extension = time.monotonic() + extension_retry_pause(
                policy.extend_interval, self._failures
            )
        else:
            if self._state is not LeaseState.HELD:
                return
            if not ok:
                self._lose("the token was gone when extending: the lease expired or was deleted")
                return
            self._extended(sent)
            self._failures = 0
            self._next_extension = sent + policy.extend_interval
        finally:
            self._extending = None
        if self._state is LeaseState.HELD:
            self._arm()

    def _lose(self, reason: str) -> None:
        """Mark the lease lost: cancel the body that holds it, clean up, call the hook."""
        if self._state is not LeaseState.HELD:
            return
        self._state = LeaseState.LOST
        loss = self._loss = LockLost(self.name, reason)
        if _events.listening("lock_lost"):
            _events.emit(self._event("lock_lost", error=loss))
        holder = self._holder
        if (
            holder is not None
            and not self._exiting
            and not holder.done()
            and holder is not asyncio.current_task()
        ):
            self._cancel_holder(holder, loss)
        self._stop_watchdog()
        # The key may still hold our token (an extension that could not get through,
        # or max_hold): delete it, so the next holder need not wait for the TTL. The
        # release of the lease waits for this, so nothing runs on after `async with`.
        self._cleanup = spawn(
            clean_up(self._resource, self._client, self.token, self._release_timeout()),
            f"cleaning up lost lock {self.name!r}",
        )
        if self._policy.on_lost is not None:
            _call_hook(self._policy.on_lost, loss)

    def _cancel_holder(self, holder: asyncio.Task[Any], loss: LockLost) -> None:
        """Cancel the body; on Python 3.11, again until it leaves ``async with``.

        Python 3.11's ``asyncio.wait_for`` (used by redis-py too) drops a cancellation
        that arrives just as the awaited call completes, which would leave the body
        running without the lock. So there the cancellation is repeated every few
        milliseconds until the body reaches ``__aexit__``; 3.12 fixed ``wait_for``.
        """
        holder.cancel(msg=f"asynclock: {loss}")
        self._cancels += 1
        if sys.version_info < (3, 12) and self._cancels <= _MAX_REPEATED_CANCELS:
            # At the next turns of the loop first, whose phase varies; a timer alone
            # would keep landing in the very phase where wait_for drops it.
            loop = asyncio.get_running_loop()
            if self._cancels <= _EAGER_REPEATED_CANCELS:
                loop.call_soon(self._cancel_again, holder, loss)
            else:
                loop.call_later(_REPEATED_CANCEL_INTERVAL, self._cancel_again, holder, loss)

    def _cancel_again(self, holder: asyncio.Task[Any], loss: LockLost) -> None:
        if not self._exiting and not holder.done():
            self._cancel_holder(holder, loss)

    def _release_timeout(self) -> float:
        return bounded_release_timeout(self._server_expiry - time.monotonic())

    async def _give_back(self, timeout: float) -> bool:
        """Release by token (or hand over), or with ``hold_at_least``, shorten the TTL.

        Keeping the key until ``hold_at_least`` after the acquire makes a job that
        finished early still exclude a replica whose scheduler fires it a little later.
        """
        keep = self._policy.hold_at_least
        if keep is not None:
            left = self.acquired_at + keep - time.monotonic()
            if left > 0.001:
                return await shorten_by_token(
                    self._resource, self._client, self.token, math.ceil(left * 1000), timeout
                )
        # Coroutines of this process wait for this lock: the queue may hand it over.
        queue = queue_for(self._client, self._resource.channels)
        if queue is None:
            return await release_by_token(self._resource, self._client, self.token, timeout)
        return await queue.release(self._resource, self._client, self.token, timeout)

    async def _give_back_logged(self, timeout: float) -> None:
        try:
            await self._give_back(timeout)
        except LockBackendError as exc:
            _log.warning("could not release lock %r; it expires within its TTL: %s", self.name, exc)

    async def _release(self) -> bool:
        """Stop the watchdog and release; return whether the lease was still ours."""
        self._stop_watchdog()
        if self._state is not LeaseState.HELD:
            if self._cleanup is not None:
                await complete_despite_cancel(wait_done(self._cleanup))
            return False
        self._state = LeaseState.RELEASED
        timeout = self._release_timeout()
        try:
            ours = await self._give_back(timeout)
        except asyncio.CancelledError:
            # Cancelled with the release in flight: it may or may not have run. Run it
            # again to its end (by token, so twice is harmless), then go on cancelled.
            # Retrying only here keeps the common path free of an extra task.
            await complete_despite_cancel(self._give_back_logged(timeout))
            raise
        if not ours:
            self._state = LeaseState.LOST
            self._loss = LockLost(
                self.name, "the lease was gone at release: it expired or was deleted"
            )
            if _events.listening("lock_lost"):
                _events.emit(self._event("lock_lost", error=self._loss))
        elif _events.listening("lock_released"):
            _events.emit(self._event("lock_released"))
        return ours


def _on_watchdog_timer(lease_ref: weakref.ref[Lease]) -> None:
    """The watchdog's timer: wake the lease, if anyone still holds it."""
    lease = lease_ref()
    if lease is not None:
        lease._on_timer()


def _call_hook(hook: OnLost, loss: LockLost) -> None:
    """Call the ``on_lost`` hook; run it as a task if it is a coroutine function."""
    try:
        result = hook(loss)
    except Exception:
        _log.exception("the on_lost hook of lock %r raised", loss.name)
        return
    if inspect.isawaitable(result):
        spawn(_await_hook(result, loss), f"the on_lost hook of lock {loss.name!r}")


async def _await_hook(result: Awaitable[None], loss: LockLost) -> None:
    try:
        await result
    except Exception:
        _log.exception("the on_lost hook of lock %r raised", loss.name)
