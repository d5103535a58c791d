"""The lease lifecycle that every primitive shares.

A primitive (``Mutex`` and the others) contributes a :class:`Resource`: the keys and
Lua scripts that acquire, extend and release one holding in Redis. Everything else
lives here, written once: waiting and retrying, the lease's deadline, the watchdog
that extends the lease beside the critical section, loss (cancel the body, raise
``LockLost``), cancellation safety and error mapping.

Timeline of one holding, on the client's monotonic clock::

    sent ──acquire──► reply          the server sets PX ttl somewhere in between
     │
     ├─ deadline = sent + ttl - drift            the lease certainly runs at least this long
     │
     ├─ every extend_interval: extend ──► deadline = extend_sent + ttl - drift
     │
     └─ now >= deadline, no extension succeeded: the lease is LOST, at once, on our
        own clock, before the server can hand the name to someone else.

Measuring from *before* the command was sent makes the deadline conservative: the
server's expiry can only be later. The drift allowance (1 % of the TTL plus 2 ms, as in
Redlock) covers the two clocks running at slightly different rates.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

import redis
import redis.asyncio
from redis.exceptions import RedisClusterException, RedisError

from . import _events
from ._errors import LockBackendError, LockError, LockLost, LockNotAcquired, LockNotOwned
from ._notify import Waiting, notifier_for, waiting_for
from ._retry import DEFAULT_RETRY, RetryStrategy
from ._validate import MAX_KEEP, MIN_TTL, check_optional_seconds, check_seconds

_log = logging.getLogger("asynclock")
_T = TypeVar("_T")

#: What a failing Redis call raises: redis-py's errors (a cluster client's routing
#: errors are not RedisError) and the OS's socket errors.
_BACKEND_ERRORS: Final = (RedisError, RedisClusterException, OSError)

#: A hook called with the ``LockLost`` error when a lease is lost; it may be async.
OnLost = Callable[[LockLost], Awaitable[None] | None]

# Python 3.11 only: how often, and how many times at most, the cancellation of a body
# whose lease was lost is repeated (see Lease._cancel_holder).
_EAGER_REPEATED_CANCELS: Final = 20
_REPEATED_CANCEL_INTERVAL: Final = 0.005
_MAX_REPEATED_CANCELS: Final = 220

# With notifications, how often a waiter re-checks at least (a lost message, or a
# holder that crashed without a release), unless the holder's lease runs out sooner.
_NOTIFIED_RECHECK: Final = 0.25

# The longest a release may take before it is given up (the lease then expires on its
# own). Bounded so that a dead server cannot hold an ``async with`` exit for long.
_RELEASE_TIMEOUT_CAP: Final = 2.0
# How many times in a row a release may hand the lock to a waiter of its own process
# while another process is first in line: a short run saves the cross-process wake-up,
# and the bound keeps the other processes' turn near.
_LOCAL_RUN: Final = 8
_RELEASE_TIMEOUT_FLOOR: Final = 0.1


# --- decisions without I/O -------------------------------------------------------------


def drift_allowance(ttl: float) -> float:
    """Return how much of a ``ttl`` lease the client gives up for clock drift.

    1 % of the TTL plus 2 ms: the allowance of the Redlock algorithm for two clocks
    that run at slightly different rates, plus timer granularity.
    """
    return ttl * 0.01 + 0.002


def lease_deadline(sent_at: float, ttl: float) -> float:
    """Return when a lease whose command was sent at ``sent_at`` certainly still holds.

    The server set the expiry at or after ``sent_at``, so the lease lasts at least
    until ``sent_at + ttl`` on the server's clock; the drift allowance covers the
    clocks' disagreement about the length of ``ttl``.
    """
    return sent_at + ttl - drift_allowance(ttl)


def extension_retry_pause(extend_interval: float, failures: int) -> float:
    """Return the pause before retrying an extension after ``failures`` failures.

    Starts at 50 ms and doubles, but never waits longer than half an interval: the
    lease's deadline, not this pause, decides when retrying stops.
    """
    pause: float = min(extend_interval / 2, 0.05 * 2.0 ** (failures - 1))
    return pause * (0.5 + random.random() / 2)


# --- what a primitive contributes ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer of one acquire attempt.

    :ivar acquired: whether the caller now holds the lease
    :ivar fencing_tokens: one fencing token per name, when acquired
    :ivar retry_after: when not acquired, seconds until the holder's lease runs out,
        if known; a waiter never sleeps longer than this
    """

    acquired: bool
    fencing_tokens: tuple[int, ...]
    retry_after: float | None = None


@dataclass(slots=True)
class Successor:
    """The next waiter of a process's queue, to which a release may hand the lock.

    The waiter puts it up before it waits; a release of the same lock in the same
    process may then give the lock straight to ``token`` in one script call instead
    of deleting it and letting the waiter try again.

    :ivar claimed: a release is handing over to it: from then on, the lock may be held
        under ``token`` even if the waiter never hears of it (a lost reply), so a
        waiter that gives up releases by ``token``
    :ivar handed: once handed over, when the hand-over was sent and the fencing tokens
    """

    token: str
    ttl_ms: int
    waiter: str = ""
    place: str = ""
    jump_line: bool = False
    claimed: bool = False
    handed: tuple[float, tuple[int, ...]] | None = None


@dataclass(frozen=True, slots=True)
class HandOver:
    """The answer of a release that may hand over: released, and the successor's grant.

    :ivar released: whether the caller's token still held everything it released
    :ivar fencing_tokens: the successor's fencing tokens if it got the lock, else ``None``
    """

    released: bool
    fencing_tokens: tuple[int, ...] | None


class Resource(Protocol):
    """The keys and scripts of one primitive: all it adds to the shared lifecycle.

    Every method is one atomic script call (or one read) keyed by the caller's token,
    so the lifecycle can retry, extend and clean up without knowing the data layout.
    """

    @property
    def names(self) -> tuple[str, ...]:
        """The name(s) of the lock, one fencing token each."""
        ...

    @property
    def description(self) -> str:
        """The lock's name(s), for messages."""
        ...

    @property
    def key(self) -> str:
        """The lock's main Redis key, for events."""
        ...

    @property
    def channels(self) -> tuple[str, ...]:
        """The pub/sub channels its releases are published on."""
        ...

    @property
    def exclusive(self) -> bool:
        """Whether one holder excludes every other (so the next waiter need not try)."""
        ...

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: str = ""
    ) -> Grant:
        """Try once to take the lease for ``token`` with a ``ttl_ms`` expiry.

        ``waiter`` is the id of the waiting process (its notifier), or ``""``; a
        resource that keeps a line of waiting processes (to wake only the first at a
        release) puts it in line when refused, and on success does what ``place``
        says: ``""`` nothing, ``"leave"`` give up the place, ``"back"`` move it to the
        back. A resource without a line ignores both.
        """
        ...

    async def leave_line(self, client: Any, waiter: str) -> None:
        """Give up ``waiter``'s place in line (nothing, for a resource without one)."""
        ...

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        """Reset the expiry to ``ttl_ms`` if ``token`` still holds; never re-create."""
        ...

    async def release(self, client: Any, token: str) -> bool:
        """Give back what ``token`` holds; report whether it held all of it."""
        ...

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        """Release, or give the lock straight to ``to`` (a waiter of this process).

        A resource that cannot hand over releases, and says so with no fencing tokens.
        """
        ...

    async def locked(self, client: Any) -> bool:
        """Report whether anyone holds the lock."""
        ...


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """The timing settings of a lock, checked once at construction.

    :ivar ttl: the lease's time to live, in seconds
    :ivar extend_interval: seconds between extensions while held
    :ivar auto_extend: whether a watchdog extends the lease while it is held
    :ivar max_hold: the longest a lease may be held in all, or ``None``
    :ivar on_lost: called with the ``LockLost`` error when a lease is lost
    :ivar hold_at_least: keep the lock until this long after the acquire, even if
        released earlier, or ``None``
    """

    ttl: float
    extend_interval: float
    auto_extend: bool
    max_hold: float | None
    on_lost: OnLost | None
    hold_at_least: float | None = None

    @classmethod
    def build(
        cls,
        ttl: object,
        extend_interval: object,
        auto_extend: object,
        max_hold: object,
        on_lost: object,
        hold_at_least: object = None,
    ) -> LeasePolicy:
        """Validate the arguments and return the policy they describe."""
        checked_ttl = check_seconds(ttl, "ttl", minimum=MIN_TTL, maximum=MAX_KEEP)
        if extend_interval is None:
            interval = checked_ttl / 3
        else:
            interval = check_seconds(extend_interval, "extend_interval")
            # The lease is sure to hold only until ttl less the drift allowance: an
            # extension must come before that, or the lease is lost every time.
            usable = checked_ttl - drift_allowance(checked_ttl)
            if interval >= usable:
                raise ValueError(
                    f"extend_interval ({interval} s) must be shorter than ttl ({checked_ttl} s)"
                    f" less its drift allowance, so below {usable:.4g} s"
                )
        if not isinstance(auto_extend, bool):
            raise TypeError(f"auto_extend must be a bool, not {type(auto_extend).__name__}")
        if on_lost is not None and not callable(on_lost):
            raise TypeError("on_lost must be a callable taking the LockLost error")
        checked_max_hold = check_optional_seconds(max_hold, "max_hold")
        least = None
        if hold_at_least is not None:
            least = check_seconds(hold_at_least, "hold_at_least", maximum=MAX_KEEP)
        if least is not None and checked_max_hold is not None and least > checked_max_hold:
            raise ValueError(
                f"hold_at_least ({least} s) must not exceed max_hold ({checked_max_hold} s)"
            )
        return cls(
            ttl=checked_ttl,
            extend_interval=interval,
            auto_extend=auto_extend,
            max_hold=checked_max_hold,
            on_lost=on_lost,  # checked callable above
            hold_at_least=least,
        )

    @property
    def ttl_ms(self) -> int:
        """The TTL in whole milliseconds, rounded up so the server never holds less."""
        return math.ceil(self.ttl * 1000)


# --- helpers for cancellation ----------------------------------------------------------

_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in the background, keeping a reference until it is done."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _complete_despite_cancel(aw: Coroutine[Any, Any, _T]) -> _T:
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


async def _within(aw: Awaitable[_T], timeout: float) -> _T:
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

    handle = asyncio.get_running_loop().call_later(timeout, expire)
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
        if fired:  # expired just as the work finished: take our cancel back
            task.uncancel()


async def _release_by_token(resource: Resource, client: Any, token: str, timeout: float) -> bool:
    """Delete whatever ``token`` holds, within ``timeout`` seconds; map failures."""
    try:
        return await _within(resource.release(client, token), timeout)
    except (TimeoutError, *_BACKEND_ERRORS) as exc:
        raise LockBackendError(resource.description, "release", exc) from exc


async def _extend_by_token(
    resource: Resource, client: Any, token: str, ttl_ms: int, timeout: float
) -> bool:
    """Set what ``token`` holds to expire in ``ttl_ms``, within ``timeout`` seconds."""
    try:
        return await _within(resource.extend(client, token, ttl_ms), timeout)
    except (TimeoutError, *_BACKEND_ERRORS) as exc:
        raise LockBackendError(resource.description, "release", exc) from exc


async def _clean_up(resource: Resource, client: Any, token: str, timeout: float) -> None:
    """Best-effort release by token, after an acquire of unknown outcome or a loss."""
    try:
        await _release_by_token(resource, client, token, timeout)
    except LockBackendError as exc:
        _log.warning(
            "could not clean up lock %r; it expires on its own within its TTL: %s",
            resource.description,
            exc,
        )


# --- one holding ------------------------------------------------------------------------

_HELD: Final = "held"
_LOST: Final = "lost"
_RELEASED: Final = "released"


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
        "_state",
        "_timer",
        "acquired_at",
        "extensions",
        "fencing_tokens",
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
        self._state: str = _HELD
        self._loss: LockLost | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._extending: asyncio.Task[None] | None = None
        self._next_extension = sent_at + policy.extend_interval
        self._failures = 0
        self._cleanup: asyncio.Future[None] | None = None
        self._holder: asyncio.Task[Any] | None = None
        self._exiting = False
        self._cancels = 0

    def __repr__(self) -> str:
        return (
            f"<Lease {self._resource.description!r} {self._state} "
            f"fencing_tokens={self.fencing_tokens} remaining={self.remaining:.3f}s>"
        )

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
        if self._state is not _HELD:
            return 0.0
        return max(0.0, self._deadline - time.monotonic())

    @property
    def owned(self) -> bool:
        """Whether the lease is held: not released, not lost, deadline not passed."""
        return self._state is _HELD and time.monotonic() < self._deadline

    @property
    def lost(self) -> LockLost | None:
        """The ``LockLost`` error if the lease was lost, else ``None``."""
        return self._loss

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
                ok = await self._resource.extend(self._client, self.token, self._policy.ttl_ms)
        except (TimeoutError, *_BACKEND_ERRORS) as exc:
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
        if self._state is _RELEASED:
            raise LockNotOwned(self.name, "already released")
        if not await self._release():
            raise LockNotOwned(self.name, self._loss.reason if self._loss else "lost")

    # -- internals ---------------------------------------------------------------------

    def _check_held(self) -> None:
        if self._state is _HELD and time.monotonic() >= self._deadline:
            self._lose("the lease ran out before an extension succeeded")
        if self._state is _LOST:
            assert self._loss is not None
            raise LockNotOwned(self.name, self._loss.reason)
        if self._state is _RELEASED:
            raise LockNotOwned(self.name, "already released")

    def _extended(self, sent: float) -> None:
        self._deadline = max(self._deadline, lease_deadline(sent, self._policy.ttl))
        self._server_expiry = max(self._server_expiry, time.monotonic() + self._policy.ttl)
        self.extensions += 1
        if _events.listening("lock_extended"):
            _events.emit(self._event("lock_extended"))

    def _event(self, event: str, error: BaseException | None = None) -> _events.LockEvent:
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
        )

    # The watchdog is a timer, not a task: most leases are released long before their
    # first extension, and arming a timer costs far less than starting a task. Only
    # an extension that is due runs as a task.

    def _start_watchdog(self) -> None:
        self._next_extension = self.acquired_at + self._policy.extend_interval
        self._arm()

    def _arm(self) -> None:
        """Set the timer for the next thing to do: extend, or declare the lease lost."""
        wake = self._deadline
        if self._hold_limit is not None:
            wake = min(wake, self._hold_limit)
        if self._policy.auto_extend:
            wake = min(wake, self._next_extension)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, wake - time.monotonic()), self._on_timer)

    def _stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        extending = self._extending
        if extending is not None and extending is not asyncio.current_task():
            extending.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if self._state is not _HELD:
            return
        now = time.monotonic()
        if now >= self._deadline:
            self._lose("the lease ran out before an extension succeeded")
        elif self._hold_limit is not None and now >= self._hold_limit:
            self._lose(f"held longer than max_hold ({self._policy.max_hold} s)")
        elif self._policy.auto_extend and now >= self._next_extension:
            self._extending = asyncio.ensure_future(self._extend_in_background())
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
            if self._state is not _HELD:
                return
            if not ok:
                self._lose("the token was gone when extending: the lease expired or was deleted")
                return
            self._extended(sent)
            self._failures = 0
            self._next_extension = sent + policy.extend_interval
        finally:
            self._extending = None
        if self._state is _HELD:
            self._arm()

    def _lose(self, reason: str) -> None:
        """Mark the lease lost: cancel the body that holds it, clean up, call the hook."""
        if self._state is not _HELD:
            return
        self._state = _LOST
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
        self._cleanup = asyncio.ensure_future(
            _clean_up(self._resource, self._client, self.token, self._release_timeout())
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
        left = self._server_expiry - time.monotonic()
        return min(max(left, _RELEASE_TIMEOUT_FLOOR), _RELEASE_TIMEOUT_CAP)

    async def _give_back(self, timeout: float) -> bool:
        """Release by token, or with ``hold_at_least``, shorten the TTL to what is left.

        Keeping the key until ``hold_at_least`` after the acquire makes a job that
        finished early still exclude a replica whose scheduler fires it a little later.
        """
        keep = self._policy.hold_at_least
        if keep is not None:
            left = self.acquired_at + keep - time.monotonic()
            if left > 0.001:
                return await _extend_by_token(
                    self._resource, self._client, self.token, math.ceil(left * 1000), timeout
                )
        waiting = waiting_for(self._client, self._resource.channels)
        successor = None if waiting is None else waiting.successor
        if waiting is None or successor is None or successor.claimed:
            released = await _release_by_token(self._resource, self._client, self.token, timeout)
            if waiting is not None and successor is None:
                # A coroutine of this process waits but has not yet asked for a
                # hand-over (a body that released without ever yielding): it may not
                # hear of this release otherwise, so wake it to try.
                waiting.event.set()
            return released
        # The next waiter of this process is waiting for this release: give it the
        # lock in the same script call, unless another process's turn comes first.
        successor.claimed = True
        successor.waiter = waiting.notifier.id
        successor.place = waiting.place_on_success()
        successor.jump_line = waiting.local_run < _LOCAL_RUN
        sent = time.monotonic()
        try:
            result = await _within(
                self._resource.hand_over(self._client, self.token, successor), timeout
            )
        except (TimeoutError, *_BACKEND_ERRORS) as exc:
            waiting.in_line = True  # the script may have put the process in line
            raise LockBackendError(self._resource.description, "release", exc) from exc
        if result.fencing_tokens is None:
            # Another process's turn (or the lease was lost): the release woke the
            # first process in line and put this one at the back. The successor is
            # not woken to race it; it tries when its process's turn comes (or at
            # its fallback re-check).
            waiting.local_run = 0
            waiting.in_line = True
        else:
            successor.handed = (sent, result.fencing_tokens)
            waiting.tried(True, successor.place)
            waiting.local_run += 1
            waiting.event.set()
        return result.released

    async def _give_back_logged(self, timeout: float) -> None:
        try:
            await self._give_back(timeout)
        except LockBackendError as exc:
            _log.warning("could not release lock %r; it expires within its TTL: %s", self.name, exc)

    async def _release(self) -> bool:
        """Stop the watchdog and release; return whether the lease was still ours."""
        self._stop_watchdog()
        if self._state is not _HELD:
            if self._cleanup is not None:
                await _complete_despite_cancel(_wait_for(self._cleanup))
            return False
        self._state = _RELEASED
        timeout = self._release_timeout()
        try:
            ours = await self._give_back(timeout)
        except asyncio.CancelledError:
            # Cancelled with the release in flight: it may or may not have run. Run it
            # again to its end (by token, so twice is harmless), then go on cancelled.
            # Retrying only here keeps the common path free of an extra task.
            await _complete_despite_cancel(self._give_back_logged(timeout))
            raise
        if not ours:
            self._state = _LOST
            self._loss = LockLost(
                self.name, "the lease was gone at release: it expired or was deleted"
            )
            if _events.listening("lock_lost"):
                _events.emit(self._event("lock_lost", error=self._loss))
        elif _events.listening("lock_released"):
            _events.emit(self._event("lock_released"))
        return ours


def _call_hook(hook: OnLost, loss: LockLost) -> None:
    """Call the ``on_lost`` hook; run it as a task if it is a coroutine function."""
    try:
        result = hook(loss)
    except Exception:
        _log.exception("the on_lost hook of lock %r raised", loss.name)
        return
    if inspect.isawaitable(result):
        _spawn(_await_hook(result, loss))


async def _await_hook(result: Awaitable[None], loss: LockLost) -> None:
    try:
        await result
    except Exception:
        _log.exception("the on_lost hook of lock %r raised", loss.name)


async def _wait_for(task: asyncio.Future[None]) -> None:
    """Wait for ``task`` to finish, whatever its outcome (logged by the task itself)."""
    await asyncio.wait([task])


# --- the lock object: acquire, wait, hold, release ----------------------------------------


class _Unset:
    """The type of :data:`_UNSET`."""


_UNSET: Final = _Unset()


class LeaseLock:
    """The shared face of every primitive: acquire, wait, hold, extend, release.

    A lock object describes a lock; each acquisition makes a :class:`Lease`, kept
    per task. Several tasks may share one lock object: each acquires and releases
    its own lease, with its own token, as separate contenders would. A task that
    already holds the lock through this object cannot acquire it again (the lock
    is not reentrant; waiting on oneself would never end).

    Which lease ``release()``, ``extend()``, ``owned`` and ``fencing_token`` mean: the
    current task's, or, if it has none, the object's only lease once the task that
    acquired it has finished (so ``await asyncio.create_task(lock.acquire())`` then
    ``await lock.release()`` works). See :attr:`lease`.
    """

    def __init__(
        self,
        client: Any,
        resource: Resource,
        *,
        ttl: float,
        timeout: float | None,
        blocking: bool,
        auto_extend: bool,
        extend_interval: float | None,
        max_hold: float | None,
        retry: RetryStrategy | None,
        on_lost: OnLost | None,
        hold_at_least: float | None = None,
    ) -> None:
        _check_client(client)
        self._client = client
        self._resource = resource
        self._policy = LeasePolicy.build(
            ttl, extend_interval, auto_extend, max_hold, on_lost, hold_at_least
        )
        self._timeout = check_optional_seconds(timeout, "timeout")
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
        self._blocking = blocking
        if retry is not None and not callable(getattr(retry, "delays", None)):
            raise TypeError("retry must be a retry strategy (an object with a delays() method)")
        self._retry = DEFAULT_RETRY if retry is None else retry
        # Leases by the task that acquired them; an entry goes on release, or when
        # its task is done and its lease over (pruned at the next acquire).
        self._leases: dict[asyncio.Task[Any], Lease] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._resource.description!r} ttl={self._policy.ttl}>"

    @property
    def ttl(self) -> float:
        """The lease's time to live, in seconds."""
        return self._policy.ttl

    @property
    def lease(self) -> Lease | None:
        """The lease this object holds for the current task, or ``None``.

        When the current task holds none, the object's only lease if its task has
        finished and it is not held by an ``async with`` (as after
        ``await asyncio.create_task(lock.acquire())``). To release from another task
        a lease whose task still runs, hand that task the :class:`Lease` itself.
        """
        task = asyncio.current_task()
        own = None if task is None else self._leases.get(task)
        if own is not None:
            return own
        if len(self._leases) == 1:
            ((acquirer, lease),) = self._leases.items()
            # Only a lease whose task is done and that no ``async with`` holds: a
            # task sharing the object must never release a body's lease under it.
            if acquirer.done() and lease._holder is None:
                return lease
        return None

    @property
    def owned(self) -> bool:
        """Whether this object holds the lock: the lease of :attr:`lease` is live.

        A local check (no command is sent): not released, not lost, and its deadline
        on the client's clock has not passed. Use :meth:`locked` to ask Redis.
        """
        lease = self.lease
        return lease is not None and lease.owned

    @property
    def fencing_token(self) -> int:
        """The fencing token of this object's lease (see ``lease``), of its first name.

        Strictly increasing across successive holders of the name, and not
        consecutive: a token is never below the server clock in microseconds, so
        tokens keep increasing even after a restart or a failover sets the counter
        back. Pass it to storage that rejects writes carrying a token lower than the
        highest it has seen.

        :raises LockNotOwned: the lock is not held through this object
        """
        return self._current_lease().fencing_token

    async def locked(self) -> bool:
        """Ask Redis whether the lock is held now (for a semaphore: no permit free)."""
        return await self._call(self._resource.locked(self._client), "inspection")

    async def _call(self, aw: Awaitable[_T], action: str) -> _T:
        """Await a read of the resource, mapping Redis errors to ``LockBackendError``."""
        try:
            return await aw
        except _BACKEND_ERRORS as exc:
            raise LockBackendError(self._resource.description, action, exc) from exc

    async def acquire(
        self, blocking: bool | None = None, timeout: float | _Unset | None = _UNSET
    ) -> bool:
        """Acquire the lock for the current task; return whether it was acquired.

        :param blocking: wait for the lock if it is held (default: the constructor's)
        :param timeout: the longest wait in seconds, ``None`` for no limit (default:
            the constructor's); not allowed with ``blocking=False``
        :returns: ``True`` once Redis holds our token; ``False`` if the lock was held
            and we did not wait, the timeout passed, or the retry strategy gave up
        :raises LockError: the current task already holds the lock through this object
        :raises LockBackendError: Redis could not be reached or failed the command;
            whatever the attempt may have taken was released by token
        :raises asyncio.CancelledError: as usual; a cancelled acquire leaves nothing
            held, even if its command had already reached Redis
        """
        if blocking is None:
            blocking = self._blocking
        elif not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
        if isinstance(timeout, _Unset):
            wait_limit = self._timeout if blocking else None
        elif not blocking:
            raise ValueError("a timeout cannot be given with blocking=False")
        else:
            wait_limit = check_optional_seconds(timeout, "timeout")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("acquire() must be called from an asyncio task")
        held = self._leases.get(task)
        if held is not None and held._state is _HELD:
            raise LockError(f"lock {self._resource.description!r} is already held by this task")
        for acquirer, old in list(self._leases.items()):
            if old._state is not _HELD and (acquirer is task or acquirer.done()):
                del self._leases[acquirer]

        lease = await self._obtain(blocking, wait_limit)
        if lease is None:
            return False
        self._leases[task] = lease
        lease._start_watchdog()
        if _events.listening("lock_acquired"):
            _events.emit(lease._event("lock_acquired"))
        return True

    async def _obtain(self, blocking: bool, wait_limit: float | None) -> Lease | None:
        """Try, wait and retry until the lease is ours, or give up (``None``).

        The first try is one script call. After a failed one, a blocking acquire
        subscribes to the lock's release notifications (confirmed by the server)
        and only then tries again, so a release in between is never missed; it then
        waits for a notification, re-checking at least every fallback interval and
        when the holder's lease runs out. Waiters of one name in one process queue
        behind each other, so that one of them at a time contends with Redis.
        """
        resource, client, policy = self._resource, self._client, self._policy
        token = secrets.token_hex(16)
        delays = self._retry.delays() if blocking else iter(())
        loop = asyncio.get_running_loop()
        give_up_at = None if wait_limit is None else loop.time() + wait_limit
        in_flight = False
        wait_scope = None if give_up_at is None else asyncio.timeout_at(give_up_at)
        notifier = notifier_for(client) if blocking else None

        async def attempt(waiting: Waiting | None = None) -> tuple[Lease | None, Grant]:
            nonlocal token, in_flight
            sent = time.monotonic()
            in_flight = True
            if waiting is None:
                grant = await resource.acquire(client, token, policy.ttl_ms)
            else:
                # With the process's id: if refused, it stands in the lock's line,
                # so that a release wakes it in its turn.
                place = waiting.place_on_success()
                try:
                    grant = await resource.acquire(
                        client, token, policy.ttl_ms, waiting.notifier.id, place
                    )
                except BaseException:
                    waiting.in_line = True  # it may have been put in line: leave it
                    raise
                waiting.tried(grant.acquired, place)
            in_flight = False
            if not grant.acquired:
                return None, grant
            if time.monotonic() < lease_deadline(sent, policy.ttl):
                lease = Lease(
                    resource, client, policy, token, grant.fencing_tokens, sent, time.monotonic()
                )
                return lease, grant
            # The reply came too late (a stalled loop, a slow network): the lease may
            # already belong to someone else. Give it back, and try with a new token.
            in_flight = True
            await _release_by_token(resource, client, token, self._abandon_timeout())
            in_flight = False
            token = secrets.token_hex(16)
            return None, Grant(False, ())

        handed_maybe = False  # a hand-over to ``token`` was claimed: it may have happened

        async def wait_for_release(waiting: Waiting, delay: float) -> Lease | None:
            """Wait for a release, up to ``delay``; return the lease if one was handed over.

            A release by a coroutine of this process may hand the lock straight to us
            (the head of the process's queue); any other wakes us to try again.
            """
            nonlocal token, in_flight, handed_maybe
            successor = waiting.successor = Successor(token, policy.ttl_ms)
            try:
                # Subscribed, so that a release by another process reaches us too: the
                # process may stand in line (moved to its back) without ever having
                # been refused. A no-op once the queue's channels are subscribed.
                await waiting.watch()
                await waiting.wait(delay)
            finally:
                if waiting.successor is successor:
                    waiting.successor = None
                # A release may be handing over to this token: remembered beyond this
                # wait (and whatever ends it), since its command may reach the server
                # after our next try. No release can claim it once unregistered.
                handed_maybe = handed_maybe or successor.claimed
            if successor.handed is None:
                # Not handed over (yet): if a hand-over is under way, or its reply was
                # lost, the next try with the same token finds the lock ours.
                return None
            sent, fencing_tokens = successor.handed
            if time.monotonic() < lease_deadline(sent, policy.ttl):
                lease = Lease(
                    resource, client, policy, token, fencing_tokens, sent, time.monotonic()
                )
                waiting.took_it(lease)
                return lease
            # Woken too late (a stalled loop): give it back, go on with a new token.
            in_flight = True
            await _release_by_token(resource, client, token, self._abandon_timeout())
            in_flight = False
            token = secrets.token_hex(16)
            handed_maybe = False
            return None

        def may_hold() -> bool:
            """Whether the lock may be held under ``token`` without our knowing."""
            return in_flight or handed_maybe

        async def tries() -> Lease | None:
            """Try, wait and retry; the caller bounds it with the wait's deadline."""
            if notifier is None:  # not blocking, or no notifications: poll
                while True:
                    lease, grant = await attempt()
                    if lease is not None:
                        return lease
                    delay = next(delays, None)
                    if delay is None:
                        return None
                    if grant.retry_after is not None:
                        delay = min(delay, grant.retry_after)
                    await asyncio.sleep(delay)
            # One coroutine of this process at a time talks to Redis for this lock
            # (a burst of waiters costs one connection, not one each); the others
            # wait their turn in a queue, in order of arrival. Taking a place costs
            # no round trip, so the uncontended path is still one script call.
            leave_line = functools.partial(resource.leave_line, client)
            async with notifier.queue(resource.channels, leave_line) as waiting:
                handed_over, waiting.handed_over = waiting.handed_over, False
                if handed_over:
                    # The previous waiter of this process holds the lock: its release
                    # hands the lock straight to us, or wakes us to try.
                    lease = await wait_for_release(waiting, _NOTIFIED_RECHECK)
                    if lease is not None:
                        return lease
                lease, grant = await attempt(waiting)
                if lease is not None:
                    waiting.took_it(lease)
                    return lease
                if next(delays, None) is None:
                    return None
                await waiting.watch()  # subscribed (confirmed) before the re-check
                while True:
                    waiting.event.clear()
                    lease, grant = await attempt(waiting)
                    if lease is not None:
                        waiting.took_it(lease)
                        return lease
                    if next(delays, None) is None:  # the strategy may give up
                        return None
                    delay = _NOTIFIED_RECHECK
                    if grant.retry_after is not None:
                        delay = min(delay, grant.retry_after)
                    lease = await wait_for_release(waiting, delay)
                    if lease is not None:
                        return lease

        try:
            if wait_scope is None:  # no deadline: no timer to set and cancel
                return await tries()
            async with wait_scope:
                return await tries()
        except TimeoutError as exc:
            if (
                wait_scope is None or not wait_scope.expired()
            ):  # a socket timeout, not the end of our wait
                await self._abandon(token)
                raise LockBackendError(resource.description, "acquire", exc) from exc
            # The wait ran out, possibly while an attempt was in flight whose command
            # may have reached Redis: release by token so nothing stays held. In the
            # background, so that the caller gets its answer when its timeout says.
            if may_hold():
                _spawn(_clean_up(resource, client, token, self._abandon_timeout()))
            return None
        except asyncio.CancelledError:
            if may_hold():
                await self._abandon(token)
            raise
        except _BACKEND_ERRORS as exc:
            await self._abandon(token)
            raise LockBackendError(resource.description, "acquire", exc) from exc

    def _abandon_timeout(self) -> float:
        # Short: the caller is waiting for its error or cancellation to surface, and a
        # hold we could not delete expires on its own within the TTL.
        return min(max(self._policy.ttl, _RELEASE_TIMEOUT_FLOOR), _RELEASE_TIMEOUT_CAP)

    async def _abandon(self, token: str) -> None:
        """Release by token after an acquire whose outcome is unknown."""
        clean_up = _clean_up(self._resource, self._client, token, self._abandon_timeout())
        await _complete_despite_cancel(clean_up)

    def _current_lease(self) -> Lease:
        lease = self.lease
        if lease is None:
            raise LockNotOwned(self._resource.description, "not acquired by this task")
        return lease

    async def extend(self) -> None:
        """Reset the current task's lease to the full ``ttl``; see :meth:`Lease.extend`."""
        await self._current_lease().extend()

    async def release(self) -> None:
        """Release the current task's lease; see :meth:`Lease.release`."""
        lease = self._current_lease()
        for task, held in list(self._leases.items()):
            if held is lease:
                del self._leases[task]
        await lease.release()

    async def __aenter__(self) -> Lease:
        started = time.monotonic()
        if not await self.acquire():
            raise LockNotAcquired(self._resource.description, time.monotonic() - started)
        lease = self._current_lease()
        lease._holder = asyncio.current_task()
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        lease = self._leases.pop(task, None)
        if lease is None:  # released by hand inside the body
            return
        lease._exiting = True  # from here on, a loss must not cancel this task
        ours_cancel_only = False
        if lease._cancels:
            # Balance the cancel() calls of the loss; if no other cancellation is
            # pending, the CancelledError is ours to turn into LockLost.
            for _ in range(lease._cancels):
                pending = task.uncancel()
            ours_cancel_only = pending == 0
        release_error: LockBackendError | None = None
        try:
            await lease._release()
        except LockBackendError as error:
            release_error = error
        loss = lease._loss
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


def _check_client(client: object) -> None:
    if client is None:
        raise TypeError("client must be a redis.asyncio client, not None")
    if isinstance(client, (redis.Redis, redis.RedisCluster)):
        raise TypeError(
            "asynclock needs an asyncio client: use redis.asyncio.Redis "
            "(or redis.asyncio.RedisCluster), not the synchronous redis.Redis"
        )
    if not isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
        # Other clients (valkey-py, coredis, ...) raise their own exception types, which
        # asynclock could neither retry nor map to LockBackendError.
        raise TypeError(
            "client must be a redis-py asyncio client (redis.asyncio.Redis, or "
            f"redis.asyncio.RedisCluster), not {type(client).__module__}.{type(client).__name__}"
        )
