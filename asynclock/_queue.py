"""A process's local queue of waiters for one lock, and the hand-over protocol.

Coroutines of one process that wait for the same lock queue here, in order of
arrival, so that one of them at a time (the head) talks to Redis: a burst of waiters
costs one connection and one place in the lock's line, not one each. While the queue
is not empty its lock's channels stay subscribed.

A release by a coroutine of the same process may give the lock straight to the head,
in the same script call (a release and an acquire in one round trip). The protocol
between the two sides, through the queue::

    head (waiting)                         releaser (holding, same process)
    --------------                         --------------------------------
    queue.offer = Offer(token)
    waits for queue.event                  queue.release(): an offer, unclaimed
                                           offer.claimed = True          (1)
                                           hand_over script: release, and the
                                           lock to offer.token (or, another
                                           process's turn, just a release)
                                           offer.granted = (sent, fences) (2)
                                           queue.event.set()
    woken: offer.granted -> its lease      (no offer: a plain release, and
    the offer is withdrawn in any case     queue.event.set() wakes the head)

(1) From the claim on, the lock may be held under the head's token even if the head
never hears of it (a reply lost with the connection). So a head that gives up (its
timeout, a cancellation) after its offer was claimed releases by its token; the
release's tombstone also stops a hand-over that reaches the server later.
(2) Only when the script gave the lock: otherwise another process was first in line,
and the head waits for its own process's turn (or its fallback re-check).

The queue also keeps what the process knows of its place in the lock's line in Redis
(``in_line``), so that it leaves the line when its last waiter goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from ._aio import spawn, within
from ._errors import LockBackendError
from ._notify import Notifications
from ._resource import (
    BACKEND_ERRORS,
    Place,
    Resource,
    Successor,
    is_transient,
    release_by_token,
)

_log = logging.getLogger("asynclock")

# How many times in a row a release may hand the lock to a waiter of its own process
# while another process is first in line: a short run saves the cross-process wake-up,
# and the bound keeps the other processes' turn near.
LOCAL_RUN: Final = 8

#: Gives up a process's place in a lock's line: ``leave_line(process_id)``.
LeaveLine = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class Offer:
    """The head's standing offer to take the lock from a release in its own process.

    :ivar token: the head's token, which holds the lock after a hand-over
    :ivar ttl_ms: the head's lease time to live, in milliseconds
    :ivar claimed: a release is handing over to it (see the module's note (1))
    :ivar granted: once handed over: when the hand-over was sent, and the fencing
        tokens
    """

    token: str
    ttl_ms: int
    claimed: bool = False
    granted: tuple[float, tuple[int, ...]] | None = None


class LocalQueue:
    """The waiters of one process for one lock: a FIFO lock and a wake-up event.

    :ivar notifier: the client's notifier, whose id is the process's in the line
    :ivar description: the lock's name(s), for messages
    :ivar users: coroutines in the queue, the head included
    :ivar event: set by a release notification, or by a release of this process
    :ivar in_line: whether the process stands in the lock's line in Redis
    """

    __slots__ = (
        "_cohort",
        "_handed_over",
        "_leave_line",
        "_local_run",
        "_offer",
        "_registry",
        "_watching",
        "channels",
        "description",
        "event",
        "in_line",
        "notifier",
        "turn",
        "users",
    )

    def __init__(
        self,
        notifier: Notifications,
        channels: tuple[str, ...],
        leave_line: LeaveLine,
        registry: dict[tuple[str, ...], LocalQueue | FirstTry],
        description: str = "",
    ) -> None:
        self.notifier = notifier
        self.channels = channels
        self.description = description
        self._leave_line = leave_line
        self._registry = registry
        self.users = 0
        self.event = asyncio.Event()
        self.in_line = False
        #: Held by the head: one coroutine at a time talks to Redis for this lock.
        self.turn = asyncio.Lock()
        self._watching = False
        self._offer: Offer | None = None
        # How many releases in a row have handed over inside this process.
        self._local_run = 0
        # Set when a coroutine of this queue has just taken the lock: the next one
        # then knows it is held, and waits for its release without a useless try.
        self._handed_over = False
        # How many of the waiters, from the head on, were here when the process took
        # its place in line: the place is theirs.
        self._cohort = 0

    # -- the head's side ---------------------------------------------------------------

    def place_on_success(self, shared: bool = False) -> Place:
        """What an acquire by the head should do with the process's place in line.

        ``shared``: the lock admits more holders (a read lock), so the waiters behind
        the head may get in beside it; those that were here when the process took its
        place keep it (others that came to the line after it, in other processes,
        stay behind them). Those that came later go to the back with it.
        """
        if self.users > 1:
            if shared and self.in_line and self._cohort > 1:
                return Place.NONE
            return Place.BACK  # more of us wait: let the other processes go first
        return Place.LEAVE if self.in_line else Place.NONE

    def tried(self, acquired: bool, place: Place) -> None:
        """Note the outcome of a try made with the process's id."""
        if not acquired:
            self.stood_in_line()  # refused: the script put us in line
        elif place is Place.BACK:
            self.in_line = True  # moved back, for the waiters here now
            self._cohort = self.users - 1
        elif place is Place.LEAVE:
            self.in_line = False
            self._cohort = 0
        elif self.in_line:
            self._cohort -= 1  # the place kept for the rest of the cohort

    def stood_in_line(self) -> None:
        """Note that the process took a place in the lock's line (or may have): the
        waiters here now are the ones it is kept for."""
        if not self.in_line:
            self._cohort = self.users
        self.in_line = True

    def took_lock(self, exclusive: bool) -> None:
        """Note that the head has just taken the lock.

        The next in line then waits for its release (a notification, or a hand-over)
        before its first try, unless the lock admits more holders (a semaphore).
        Notifications of earlier releases are dropped now: the one it waits for can
        only come after this acquisition.
        """
        self._handed_over = exclusive
        self.event.clear()

    def take_held_by_predecessor(self) -> bool:
        """Whether the previous head of this queue holds the lock (asked once)."""
        held, self._handed_over = self._handed_over, False
        return held

    async def watch(self) -> None:
        """Subscribe to the lock's channels, once per queue, confirmed by the server."""
        if not self._watching:
            await self.notifier.watch(self.channels, self.event)
            self._watching = True

    async def wait_for_release(self, offer: Offer | None, timeout: float) -> None:
        """Wait up to ``timeout`` for a release, offering to take the lock from it
        (unless ``offer`` is ``None``: then a release of this process only wakes it).

        Returns when a release notification comes, a release of this process wakes
        the head (``offer.granted`` tells whether it handed the lock over), or the
        time is up. The offer is withdrawn however the wait ends; whether it was
        claimed meanwhile stays on it.
        """
        self._offer = offer
        try:
            # Subscribed, so that a release by another process reaches us too: the
            # process may stand in line (moved to its back) without ever having
            # been refused. A no-op once the queue's channels are subscribed.
            await self.watch()
            # within: lighter than asyncio.timeout, on the path of every hand-over.
            with contextlib.suppress(TimeoutError):
                await within(self.event.wait(), timeout)
        finally:
            if self._offer is offer:
                self._offer = None

    def leave(self) -> None:
        """Give up a place taken with :func:`join_queue`.

        When the last waiter has gone, the process leaves the lock's line and stops
        watching its channels. The line is left in the background: a place left
        behind only delays the other processes until it lapses, and the last waiter
        should not wait for this.
        """
        self.users -= 1
        if self.users:
            return
        del self._registry[self.channels]
        if self.in_line:
            what = f"leaving the line of waiters of lock {self.description!r}"
            spawn(_leave_line(self._leave_line, self.notifier.id), what)
        if self._watching:
            self.notifier.unwatch(self.channels, self.event)

    # -- the releaser's side -----------------------------------------------------------

    async def release(self, resource: Resource, client: Any, token: str, timeout: float) -> bool:
        """Release ``token``'s hold, giving the lock to the head if it offers to take it.

        :returns: whether ``token`` still held everything it released
        :raises LockBackendError: the release failed or took longer than ``timeout``
        """
        offer = self._offer
        if offer is None and self._handed_over and self.users:
            # The next head has its turn but has not run yet: the body released without
            # yielding once. One turn of the loop lets it offer to take the lock, and
            # saves it a round trip of its own (a try after being woken).
            await asyncio.sleep(0)
            offer = self._offer
        if offer is None or offer.claimed or not resource.hands_over:
            released = await release_by_token(resource, client, token, timeout)
            if offer is None or not resource.hands_over:
                # A coroutine of this process waits but has not yet offered to take
                # over (a body that released without ever yielding), or the lock
                # cannot be handed over: it may not hear of this release otherwise
                # (nobody in line, no message), so wake it to try.
                self.event.set()
            return released
        # Unless another process's turn comes first, the head gets the lock in the
        # same script call.
        offer.claimed = True
        place = self.place_on_success(not resource.exclusive)
        successor = Successor(
            offer.token, offer.ttl_ms, self.notifier.id, place, self._local_run < LOCAL_RUN
        )
        sent = time.monotonic()
        try:
            result = await within(resource.hand_over(client, token, successor), timeout)
        except (TimeoutError, *BACKEND_ERRORS) as exc:
            self.in_line = True  # the script may have put the process in line
            if isinstance(exc, TimeoutError) or not is_transient(exc):
                raise LockBackendError(resource.description, "release", exc) from exc
            # A lost connection: whether the names went to the head or not, a release
            # by token settles ours (the head, its offer claimed, finds them its own
            # at its next try if they did), and wakes the head to make that try.
            left = max(0.0, timeout - (time.monotonic() - sent))
            released = await release_by_token(resource, client, token, left)
            self.event.set()
            return released
        if result.fencing_tokens is None:
            # Another process's turn (or the lease was lost): the release woke the
            # first process in line and put this one at the back. The head is not
            # woken to race it; it tries when its process's turn comes (or at its
            # fallback re-check).
            self._local_run = 0
            self.in_line = True
        else:
            offer.granted = (sent, result.fencing_tokens)
            self.tried(True, place)
            self._local_run += 1
            self.event.set()
        return result.released


class FirstTry:
    """A try for a lock by a coroutine of this process while no queue exists for it.

    An uncontended acquire makes it and nothing else. A coroutine arriving meanwhile
    makes the queue (:func:`enter_queue`) with the try's maker at its head, so that
    arrival order is kept and a burst of waiters still costs one try at a time. The
    maker ends it with :meth:`took_lock` or :meth:`refused`.

    :ivar queue: that queue, whose turn is held for the maker; ``None`` while nobody
        else came
    """

    __slots__ = ("_channels", "_registry", "queue")

    def __init__(
        self, registry: dict[tuple[str, ...], LocalQueue | FirstTry], channels: tuple[str, ...]
    ) -> None:
        self._registry = registry
        self._channels = channels
        self.queue: LocalQueue | None = None

    def took_lock(self, exclusive: bool) -> None:
        """End the try, which took the lock; a queue made meanwhile goes on without us."""
        self._end()
        queue = self.queue
        if queue is not None:
            queue.took_lock(exclusive)  # its next head waits for our release
            queue.turn.release()
            queue.leave()

    async def refused(self, client: Any, notifier: Notifications, resource: Resource) -> LocalQueue:
        """End the try, refused (or failed); return the queue, its turn ours.

        The refusal put the process in the lock's line (a failed try may have), which
        the queue now knows, so that its last waiter leaves the line.
        """
        self._end()
        queue = self.queue
        if queue is None:
            queue = join_queue(client, notifier, resource)
            await queue.turn.acquire()  # a new queue's turn is free: this does not wait
        queue.stood_in_line()
        return queue

    def _end(self) -> None:
        if self._registry.get(self._channels) is self:
            del self._registry[self._channels]


# The queues of each client's process, by the lock's channels; a FirstTry while a
# coroutine tries for the lock before any queue exists.
_queues: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], LocalQueue | FirstTry]] = (
    weakref.WeakKeyDictionary()
)


def queue_for(client: Any, channels: tuple[str, ...]) -> LocalQueue | None:
    """The process's queue of waiters for the lock on ``channels``, if anyone waits."""
    queues = _queues.get(client)
    queue = None if queues is None else queues.get(channels)
    return queue if isinstance(queue, LocalQueue) else None


def first_try(client: Any, channels: tuple[str, ...]) -> FirstTry | None:
    """Start this process's try for the lock on ``channels`` without a queue, if no
    coroutine of the process waits for the lock or tries it. ``None``: the caller
    enters the queue (:func:`enter_queue`).
    """
    queues = _queues.get(client)
    if queues is None:
        queues = _queues[client] = {}
    elif channels in queues:
        return None
    attempt = queues[channels] = FirstTry(queues, channels)
    return attempt


async def enter_queue(client: Any, notifier: Notifications, resource: Resource) -> LocalQueue:
    """Join the queue for ``resource``'s lock; the caller then waits for its turn.

    During a first try, the first to arrive makes the queue, and takes its turn for
    the try's maker: it is first, whatever the try's outcome.
    """
    queues = _queues.get(client)
    attempt = None if queues is None else queues.get(resource.channels)
    if isinstance(attempt, FirstTry):
        queue = attempt.queue = join_queue(client, notifier, resource)
        # A new queue's turn is free: this returns at once, before any other task runs.
        await queue.turn.acquire()
    return join_queue(client, notifier, resource)


def join_queue(client: Any, notifier: Notifications, resource: Resource) -> LocalQueue:
    """Take a place in this process's queue for ``resource``'s lock; leave with
    :meth:`LocalQueue.leave`. The head is whoever holds :attr:`LocalQueue.turn`."""
    queues = _queues.get(client)
    if queues is None:
        queues = _queues[client] = {}
    channels = resource.channels
    queue = queues.get(channels)
    if not isinstance(queue, LocalQueue):  # none, or the caller's own first try
        leave_line = functools.partial(resource.leave_line, client)
        queue = queues[channels] = LocalQueue(
            notifier, channels, leave_line, queues, resource.description
        )
    queue.users += 1
    return queue


async def _leave_line(leave_line: LeaveLine, process_id: str) -> None:
    try:
        await leave_line(process_id)
    except BACKEND_ERRORS as exc:
        _log.debug("leaving a line of waiters failed: %r", exc)
