"""One ``acquire()`` call as an object: try, wait for a release, retry, give up.

An :class:`Acquisition` owns everything one call knows: its token (a new one after a
reply that came too late), whether a command that may have taken the lock is on its
way (``in_flight``), and whether a release of this process claimed a hand-over to its
token (``maybe_handed``). From those two, :attr:`Acquisition.may_hold` says whether
the lock may be held under the token without our knowing, which decides the clean-up
when the call ends in anything but a lease.

Two ways to wait. Without notifications (not blocking, a pool of one connection, a
cluster of servers without sharded pub/sub) the call polls: try, pause from the retry
strategy (never past the holder's TTL), try again. With them, the coroutines of this
process that want the lock queue locally (``_queue.py``) and the head waits for a
release:

1. the first try is one script call, and refused, puts the process in the lock's line;
2. the head subscribes to the lock's channels (confirmed by the server), then reads
   whether the lock is still held: a release between its try and its subscription
   was published to nobody;
3. it waits out a pause of its retry strategy, which ends early at a release
   notification, a hand-over from this process, or when the holder's TTL runs out;
   every ``_NOTIFIED_RECHECK`` seconds of a longer pause it tries again in case a
   notification was lost (such a try renews its place in the line, and is not a
   retry of the strategy's);
4. it retries; each retry takes one pause of the strategy, and when the strategy
   has no more, the call gives up.

A previous head of this process that has just taken the lock makes the next head
wait for its release (which may hand the lock straight over) before its first try.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator
from typing import Any, Final

from ._aio import complete_despite_cancel, spawn
from ._errors import LockBackendError
from ._lease import Lease
from ._notify import Notifications
from ._queue import (
    LocalQueue,
    Offer,
    enter_queue,
    first_try,
)
from ._resource import (
    BACKEND_ERRORS,
    Grant,
    Resource,
    clean_up,
    is_transient,
    release_by_token,
    retries_commands,
)
from ._retry import DEFAULT_RETRY, RetryStrategy
from ._scripts import acknowledged_by
from ._timing import LeasePolicy, bounded_release_timeout, lease_deadline

# With notifications, how often a waiter tries at least (a lost message, or a holder
# that crashed without a release), unless the holder's lease runs out sooner; and
# the pause between retries when no retry strategy is given.
_NOTIFIED_RECHECK: Final = 0.25
#: Added to the holder's remaining TTL before trying again: a timer may fire up to a
#: millisecond early on uvloop (its clock counts whole milliseconds, a little behind
#: time.monotonic()), and a try before the server lets the key go is a retry spent.
_AFTER_EXPIRY: Final = 0.002


async def _until(moment: float) -> None:
    """Sleep until ``moment`` on ``time.monotonic()``, the clock callers measure with.

    The loop's timers run on its own clock, which on uvloop lags ``time.monotonic()``
    by up to a millisecond and counts whole milliseconds: a wait that timer ended may
    still be short of its timeout by a fraction of a millisecond.
    """
    left = moment - time.monotonic()
    if left > 0:
        await asyncio.sleep(left + 0.001)  # a whole millisecond more: never short again


#: The answer of a try that got none (a transient failure ridden out): refused.
_NO_ANSWER: Final = Grant(False, ())


def _new_token() -> str:
    return os.urandom(16).hex()  # what secrets.token_hex(16) returns, with fewer calls


class Acquisition:
    """One ``acquire()`` call: its token and what it may hold, and how it waits.

    :ivar token: the token the lock is acquired under; replaced after a reply that
        came too late (the old one is released first)
    :ivar in_flight: a try (or the release of a late reply) is on its way: its
        command may have reached the server
    :ivar maybe_handed: a release of this process claimed a hand-over to ``token``:
        the lock may be held under it even if we never heard of it
    :ivar handed_over: the lease came by a hand-over from a release of this process
    :ivar outage: the transient error of the latest try, while riding one out (see
        :meth:`run`); ``None`` once a try got an answer
    """

    __slots__ = (
        "_blocking",
        "_cancels",
        "_client",
        "_delays",
        "_notifier",
        "_policy",
        "_resource",
        "_rides_out",
        "_task",
        "handed_over",
        "in_flight",
        "maybe_handed",
        "outage",
        "outage_ridden",
        "token",
    )

    def __init__(
        self,
        resource: Resource,
        client: Any,
        policy: LeasePolicy,
        retry: RetryStrategy | None,
        notifier: Notifications | None,
        *,
        blocking: bool = True,
    ) -> None:
        self._resource = resource
        self._client = client
        self._policy = policy
        self.token = _new_token()
        self.in_flight = False
        self.maybe_handed = False
        self.handed_over = False
        self.outage: BaseException | None = None
        # A try was ridden out: its command may still reach the server, or may have,
        # so whatever ends the wait short of a lease releases by token.
        self.outage_ridden = False
        self._rides_out = False  # set by run(): a wait with a deadline, a retrying client
        self._blocking = blocking
        # Without one (not blocking, or a client without a usable pub/sub), it polls.
        self._notifier = notifier if blocking else None
        self._delays: Iterator[float]
        if not blocking:
            self._delays = iter(())
        elif retry is not None:
            self._delays = retry.delays()
        elif self._notifier is not None:
            # Notified waiters need no backoff: a release wakes them.
            self._delays = itertools.repeat(_NOTIFIED_RECHECK)
        else:
            self._delays = DEFAULT_RETRY.delays()

    @property
    def may_hold(self) -> bool:
        """Whether the lock may be held under ``token`` without our knowing."""
        return self.in_flight or self.maybe_handed or self.outage_ridden

    async def run(
        self, wait_limit: float | None, task: asyncio.Task[Any] | None = None
    ) -> Lease | None:
        """Try, wait and retry until the lease is ours, or give up (``None``).

        Whatever ends the call short of a lease, nothing stays held: a try whose
        command may have reached the server is released by token.

        A wait with a deadline rides out a failover or a restart: a try that fails
        with a transient error (:func:`~asynclock._resource.is_transient`) counts as
        refused, and the wait goes on, trying again at its usual pace, keeping its
        token (an acquire that reached the server is found ours by the next try). If
        the deadline comes while the server is still failing, that error is raised.
        Not when the client was given a retry policy that retries nothing.

        :param wait_limit: the longest the call waits, ``None`` for no limit
        :param task: the calling task, if the caller has it at hand
        :raises LockBackendError: a command failed; released by token first
        :raises asyncio.CancelledError: released by token first if it may hold
        """
        if task is None:
            task = asyncio.current_task()
            assert task is not None  # called from a task
        self._task, self._cancels = task, task.cancelling()
        # Whether the client retries at all is asked at the first failure only.
        self._rides_out = self._blocking and wait_limit is not None
        scope = None if wait_limit is None else asyncio.timeout(wait_limit)
        started = time.monotonic()
        try:
            if scope is None:  # no deadline: no timer to set and cancel
                lease = await self._tries()
            else:
                async with scope:
                    lease = await self._tries()
        except TimeoutError as exc:
            if scope is None or not scope.expired():  # a socket timeout, not the end of our wait
                await self._abandon()
                raise LockBackendError(self._resource.description, "acquire", exc) from exc
            # The wait ran out, possibly while a try was in flight whose command may
            # have reached Redis: release by token so nothing stays held. In the
            # background, so that the caller gets its answer when its timeout says.
            if self.may_hold:
                clean = clean_up(self._resource, self._client, self.token, self._abandon_timeout())
                spawn(clean, f"cleaning up lock {self._resource.description!r}")
            if self.outage is not None:  # the server was still failing at the deadline
                raise LockBackendError(
                    self._resource.description, "acquire", self.outage
                ) from self.outage
            assert wait_limit is not None  # the scope was set
            await _until(started + wait_limit)
            return None
        except asyncio.CancelledError:
            if self.may_hold:
                await self._abandon()
            raise
        except BACKEND_ERRORS as exc:
            await self._abandon()
            raise LockBackendError(self._resource.description, "acquire", exc) from exc
        except LockBackendError:
            # The release of a late grant failed: one more try, so nothing stays held.
            await self._abandon()
            raise
        if lease is None and self.may_hold:
            # The strategy gave up while a hand-over to our token may still reach the
            # server: its tombstone refuses the hand-over, or this frees what it gave.
            await self._abandon()
        if lease is None and self.outage is not None:
            raise LockBackendError(
                self._resource.description, "acquire", self.outage
            ) from self.outage
        return lease

    def _rides_out_failure(self, error: BaseException) -> bool:
        """Whether to count a try that failed with ``error`` as refused, and wait on."""
        if not (self._rides_out and is_transient(error) and retries_commands(self._client)):
            return False
        self.outage = error
        self.outage_ridden = True
        return True

    async def _tries(self) -> Lease | None:
        """Try, wait and retry; :meth:`run` bounds it with the wait's deadline."""
        if self._notifier is None:
            return await self._poll()
        return await self._wait_in_queue(self._notifier)

    async def _poll(self) -> Lease | None:
        while True:
            lease, grant = await self._try()
            if lease is not None:
                return lease
            delay = next(self._delays, None)
            if delay is None:
                return None
            if grant.retry_after is not None:
                delay = min(delay, grant.retry_after + _AFTER_EXPIRY)
            await asyncio.sleep(delay)

    async def _wait_in_queue(self, notifier: Notifications) -> Lease | None:
        client, resource = self._client, self._resource
        refused = None
        attempt = first_try(client, resource.channels)
        if attempt is None:
            queue = await enter_queue(client, notifier, resource)
            try:
                await queue.turn.acquire()
            except BaseException:
                queue.leave()
                raise
        else:
            # Nobody of this process waits for the lock: try at once, without a queue,
            # so that an uncontended acquire costs one script call and nothing else.
            # A refusal puts the process in the lock's line, as a head's first try
            # does; the caller then heads the queue, before anyone who came meanwhile.
            try:
                lease, refused = await self._try(waiter=notifier.id)
            except BaseException:
                queue = await attempt.refused(client, notifier, resource)
                queue.turn.release()
                queue.leave()
                raise
            if lease is not None:
                attempt.took_lock(resource.exclusive)
                return lease
            queue = await attempt.refused(client, notifier, resource)
        try:
            return await self._as_head(queue, refused)
        finally:
            queue.turn.release()
            queue.leave()

    async def _as_head(self, queue: LocalQueue, refused: Grant | None = None) -> Lease | None:
        """Try, wait and retry as the head of the process's queue for the lock.

        ``refused`` is the answer to a try made just before the queue was joined: the
        head starts by waiting, then.
        """
        if refused is not None:
            grant = refused
        else:
            if queue.take_held_by_predecessor():
                # The previous head of this process holds the lock: its release hands
                # the lock straight to us, or wakes us to try.
                lease = await self._wait_for_release(queue, _NOTIFIED_RECHECK)
                if lease is not None:
                    return lease
            lease, grant = await self._try(queue)
            if lease is not None:
                return lease
        pause = next(self._delays, None)
        if pause is None:
            return None
        await queue.watch()  # subscribed (confirmed) before the read below
        # A wake-up left by an earlier head is stale: from here on, a release either
        # shows in the read below or sets the event anew. A release between the try
        # and the subscription was published to nobody: the read sees it.
        queue.event.clear()
        try:
            free = not await self._resource.locked(self._client)
        except BACKEND_ERRORS as exc:
            if not self._rides_out_failure(exc):
                raise
            free = False
        self._raise_if_cancelled()
        while True:
            if not free:
                lease = await self._wait_out(queue, pause, grant.retry_after)
                if lease is not None:
                    return lease
            free = False
            queue.event.clear()
            lease, grant = await self._try(queue)
            if lease is not None:
                return lease
            pause = next(self._delays, None)  # the strategy may give up
            if pause is None:
                return None

    async def _wait_out(
        self, queue: LocalQueue, pause: float, retry_after: float | None
    ) -> Lease | None:
        """Wait up to ``pause`` for a release; return the lease if one was handed over.

        Ends early at a release notification, at a hand-over's wake-up, or when the
        holder's lease runs out (``retry_after``). A pause longer than the fallback
        re-check is cut into re-checks: a try, in case a notification was lost.
        """
        loop = asyncio.get_running_loop()
        if retry_after is not None:
            pause = min(pause, retry_after + _AFTER_EXPIRY)
        end = loop.time() + pause
        while True:
            left = end - loop.time()
            if left <= 0:
                return None
            last = left <= _NOTIFIED_RECHECK
            lease = await self._wait_for_release(queue, left if last else _NOTIFIED_RECHECK)
            if lease is not None or last or queue.event.is_set():
                return lease
            queue.event.clear()
            lease, grant = await self._try(queue)
            if lease is not None:
                return lease
            if grant.retry_after is not None:
                end = min(end, loop.time() + grant.retry_after + _AFTER_EXPIRY)

    async def _try(
        self, queue: LocalQueue | None = None, *, waiter: str = ""
    ) -> tuple[Lease | None, Grant]:
        """Try once to take the lock; return the lease if it is ours, and the answer.

        As the head of ``queue``, with the process's id and what to do with its place
        in line; else with ``waiter`` (the process's id, or none) and no place.
        """
        resource, client, policy = self._resource, self._client, self._policy
        sent = time.monotonic()
        self.in_flight = True
        try:
            if queue is None:
                if policy.replica_wait is None:  # no context to set: the usual case
                    grant = await resource.acquire(client, self.token, policy.ttl_ms, waiter)
                else:
                    with acknowledged_by(policy.replica_wait):
                        grant = await resource.acquire(client, self.token, policy.ttl_ms, waiter)
            else:
                # With the process's id: if refused, it stands in the lock's line, so
                # that a release wakes it in its turn.
                place = queue.place_on_success(not resource.exclusive)
                try:
                    with acknowledged_by(policy.replica_wait):
                        grant = await resource.acquire(
                            client, self.token, policy.ttl_ms, queue.notifier.id, place
                        )
                except BaseException:
                    queue.in_line = True  # it may have been put in line: leave it
                    raise
                queue.tried(grant.acquired, place)
        except BACKEND_ERRORS as exc:
            if not self._rides_out_failure(exc):
                raise
            # Still in flight: whatever the command did, the next try with the same
            # token finds it, or the end of the wait releases by token.
            self._raise_if_cancelled()
            return None, _NO_ANSWER
        self.outage = None
        self._raise_if_cancelled()  # still in flight: a grant is released by token
        self.in_flight = False
        if not grant.acquired:
            return None, grant
        lease = self._lease_if_in_time(sent, grant.fencing_tokens)
        if lease is None:
            await self._give_back_late()
        elif queue is not None:
            queue.took_lock(resource.exclusive)
        return lease, grant

    async def _wait_for_release(self, queue: LocalQueue, timeout: float) -> Lease | None:
        """Wait up to ``timeout`` for a release; return the lease if it was handed over.

        A release by a coroutine of this process may hand the lock straight to us
        (the head of the process's queue); any other wakes us to try again.
        """
        # No offer when replicas must acknowledge the acquire: a hand-over grants the
        # lock in the releaser's script call, which waits for nobody's replicas.
        offer = None if self._policy.replica_wait else Offer(self.token, self._policy.ttl_ms)
        try:
            await queue.wait_for_release(offer, timeout)
        finally:
            # A release may be handing over to this token: remembered beyond this wait
            # (and whatever ends it), since its command may reach the server after
            # our next try. No release can claim the offer once it is withdrawn.
            self.maybe_handed = self.maybe_handed or (offer is not None and offer.claimed)
        if offer is None or offer.granted is None:
            # Not handed over (yet): if a hand-over is under way, or its reply was
            # lost, the next try with the same token finds the lock ours.
            return None
        sent, fencing_tokens = offer.granted
        lease = self._lease_if_in_time(sent, fencing_tokens)
        if lease is None:
            await self._give_back_late()
        else:
            queue.took_lock(self._resource.exclusive)
            self.handed_over = True
        return lease

    def _raise_if_cancelled(self) -> None:
        """Raise a cancellation of the caller that a call below returned over.

        A client library can swallow a ``CancelledError`` (redis-py on Python 3.11 was
        seen to return from a command whose task had been cancelled meanwhile); the
        task still counts the request. Without this, a cancelled waiter would go on
        waiting until its timeout, or for ever.
        """
        if self._task.cancelling() > self._cancels:
            raise asyncio.CancelledError

    def _lease_if_in_time(self, sent: float, fencing_tokens: tuple[int, ...]) -> Lease | None:
        """The lease granted by a command sent at ``sent``, unless its answer came too late.

        Too late is past the lease's deadline on our clock (a stalled loop, a slow
        network): the lease may already belong to someone else, and the caller gives
        it back (:meth:`_give_back_late`).
        """
        policy = self._policy
        if time.monotonic() >= lease_deadline(sent, policy.ttl):
            return None
        return Lease(
            self._resource, self._client, policy, self.token, fencing_tokens, sent, time.monotonic()
        )

    async def _give_back_late(self) -> None:
        """Release a grant that came too late by its token; go on with a new token."""
        self.in_flight = True
        await release_by_token(self._resource, self._client, self.token, self._abandon_timeout())
        self._raise_if_cancelled()
        self.in_flight = False
        self.token = _new_token()
        self.maybe_handed = False

    def _abandon_timeout(self) -> float:
        # Short: the caller is waiting for its error or cancellation to surface, and a
        # hold we could not delete expires on its own within the TTL.
        return bounded_release_timeout(self._policy.ttl)

    async def _abandon(self) -> None:
        """Release by token after a call whose outcome is unknown, even if cancelled."""
        clean = clean_up(self._resource, self._client, self.token, self._abandon_timeout())
        await complete_despite_cancel(clean)
