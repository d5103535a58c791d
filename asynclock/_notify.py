"""Wake-up by notification: a release publishes, waiters of that name wake at once.

One :class:`Notifier` per client multiplexes every name and every waiting coroutine
of the process onto one pub/sub connection. Coroutines of one process that want the
same lock queue locally (FIFO), so that one of them at a time talks to Redis; while
the queue is not empty its lock's channels stay subscribed, and about a second
after it empties they are unsubscribed (and the connection goes back to the pool
after another second without any). The head of the queue subscribes, and waits for the server's
confirmation, *before* it tries the lock again, so a release between its failed try
and its subscription is never missed. Messages are at most once (a reconnect loses
some): the head keeps a bounded fallback re-check, so a lost message costs latency,
never a hang.

Across processes, a release wakes one process, not all: a refused waiter puts its
process (this notifier's id) in the lock's line in Redis, and the release publishes
the id of the first process in line whose place has not lapsed, or an empty message
(wake everyone) when nobody stands in line. Other processes ignore a message naming
someone else and wait for their turn, or for their fallback re-check: the line only
orders wake-ups, so a frozen or crashed process first in line costs the others a
re-check, and its place lapses within two seconds.

Clients without a usable pub/sub poll instead: Redis Cluster clients (whose pub/sub
needs a node per channel), and clients whose pool holds a single connection, which
the subscriber would take from the waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from ._lease import Lease, Successor

_log = logging.getLogger("asynclock")

# The longest the head of a queue waits for the server to confirm its subscription.
_CONFIRM_TIMEOUT = 1.0
# How often the reader unsubscribes from channels nobody waits on (seconds); after
# this long without any message and without waiters, the connection goes back too.
_SWEEP_INTERVAL = 1.0


class Waiting:
    """A process's local queue for one lock: a FIFO lock, and a wake-up event."""

    def __init__(
        self,
        notifier: Notifier,
        channels: tuple[str, ...],
        leave_line: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        self.notifier = notifier
        self.channels = channels
        self.leave_line = leave_line
        # Whether this process stands in the lock's line in Redis (it was refused
        # with its id, or moved to the back): it then leaves when its queue empties.
        self.in_line = False
        # The head, while it waits for the release of its predecessor in this process
        # (which may hand the lock straight to it), and how many releases in a row
        # have done so.
        self.successor: Successor | None = None
        self.local_run = 0
        self.fifo = asyncio.Lock()
        self.users = 0
        self.event = asyncio.Event()
        self.watching = False
        # Set when a coroutine of this queue has just taken the lock: the next one
        # then knows it is held, and waits for its release without a useless try.
        self.handed_over = False

    def place_on_success(self) -> str:
        """What an acquire by the head should do with the process's place in line."""
        if self.users > 1:
            return "back"  # more of us wait: let the other processes go first
        return "leave" if self.in_line else ""

    def tried(self, acquired: bool, place: str) -> None:
        """Note the outcome of a try made with the process's id."""
        if not acquired:
            self.in_line = True  # refused: the script put us in line
        elif place == "back":
            self.in_line = True
        elif place == "leave":
            self.in_line = False

    def took_it(self, lease: Lease) -> None:
        """Note that a coroutine of this queue has just taken the lock as ``lease``.

        The next in line then waits for its release (a notification, or a hand-over)
        before its first try. Notifications of earlier releases are dropped now: the
        one it waits for can only come after this acquisition.
        """
        self.handed_over = lease._resource.exclusive  # a semaphore may have more
        self.event.clear()

    async def watch(self) -> None:
        """Subscribe to the lock's channels, once per queue, confirmed by the server."""
        if not self.watching:
            await self.notifier._watch(self.channels, self.event)
            self.watching = True

    async def wait(self, timeout: float) -> None:
        """Wait for a release notification, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.event.wait()


class Notifier:
    """The pub/sub subscriber of one client, shared by every waiter in the process.

    Subscriptions follow the waiters lazily: a channel is subscribed when a waiter
    first needs it (concurrent needs are sent as one ``SUBSCRIBE``), and unsubscribed
    by the reader's sweep once nobody has waited on it for about a second, so that a
    busy lock does not pay a ``SUBSCRIBE``/``UNSUBSCRIBE`` pair at every hand-over.
    """

    def __init__(self, client: Any) -> None:
        #: This process's id in the lines of waiters, and in release messages.
        self.id = secrets.token_hex(8)
        self._pubsub = client.pubsub()
        self._events: dict[str, set[asyncio.Event]] = {}  # the channels wanted now
        self._subscribed: set[str] = set()  # SUBSCRIBE sent, no UNSUBSCRIBE since
        self._confirmed: set[str] = set()  # ... and confirmed by the server
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._queues: dict[tuple[str, ...], Waiting] = {}
        self._reader: asyncio.Task[None] | None = None
        self._to_subscribe: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        # Orders the commands that change subscriptions, and connecting: taken only
        # when there is something to send, never by a waiter whose channel is known.
        self._commands = asyncio.Lock()
        self._next_sweep = 0.0

    @contextlib.asynccontextmanager
    async def queue(
        self,
        channels: tuple[str, ...],
        leave_line: Callable[[str], Coroutine[Any, Any, None]],
    ) -> AsyncIterator[Waiting]:
        """Take a place in this process's queue for the lock, and wait for the head.

        ``leave_line(id)`` gives up the process's place in the lock's line in Redis;
        it runs in the background when the queue empties while the process is in line.
        """
        waiting = self._queues.get(channels)
        if waiting is None:
            waiting = self._queues[channels] = Waiting(self, channels, leave_line)
        waiting.users += 1
        try:
            async with waiting.fifo:
                yield waiting
        finally:
            waiting.users -= 1
            if waiting.users == 0:
                del self._queues[channels]
                if waiting.in_line:
                    # In the background: a place left behind only delays the others
                    # until it lapses, and the caller should not wait for this.
                    _in_background(waiting.leave_line(self.id))
                if waiting.watching:
                    self._unwatch(channels, waiting.event)

    async def _watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Have ``event`` set by releases on ``channels``, once the server confirms."""
        loop = asyncio.get_running_loop()
        unconfirmed = []
        for channel in channels:
            self._events.setdefault(channel, set()).add(event)
            if channel not in self._confirmed:
                confirmation = self._confirmations.get(channel)
                if confirmation is None:
                    confirmation = self._confirmations[channel] = loop.create_future()
                unconfirmed.append(confirmation)
        # Marked at once, so that concurrent waiters do not ask again; one task sends
        # everything asked for meanwhile as one SUBSCRIBE.
        new = [channel for channel in channels if channel not in self._subscribed]
        if new:
            self._subscribed.update(new)
            self._to_subscribe.extend(new)
            if self._sender is None or self._sender.done():
                self._sender = asyncio.ensure_future(self._send_subscriptions())
        try:
            # Bounded: without a confirmation the head still re-checks by polling.
            if unconfirmed:
                await asyncio.wait(unconfirmed, timeout=_CONFIRM_TIMEOUT)
        except BaseException:
            self._unwatch(channels, event)
            raise

    async def _send_subscriptions(self) -> None:
        """Subscribe to every channel asked for, in batches; start the reader."""
        while self._to_subscribe:
            batch, self._to_subscribe = self._to_subscribe, []
            try:
                async with self._commands:
                    await self._pubsub.subscribe(*batch)
            except (RedisError, OSError) as exc:
                # The waiters re-check by polling; the next one to wait asks again.
                _log.debug("subscribing to %s failed: %r", batch, exc)
                self._subscribed.difference_update(batch)
                continue
            if self._reader is None or self._reader.done():
                self._next_sweep = asyncio.get_running_loop().time() + _SWEEP_INTERVAL
                self._reader = asyncio.ensure_future(self._read())

    def _unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Stop setting ``event``; the reader's sweep unsubscribes unwanted channels."""
        for channel in channels:
            events = self._events.get(channel)
            if events is None:
                continue
            events.discard(event)
            if not events:
                del self._events[channel]

    async def _sweep(self) -> None:
        """Unsubscribe from the channels nobody waits on any more."""
        unwanted = [channel for channel in self._subscribed if channel not in self._events]
        if not unwanted:
            return
        # Unmarked before sending: a waiter needing one of them again subscribes anew
        # (after this, in lock order) and waits for the new confirmation.
        self._subscribed.difference_update(unwanted)
        self._confirmed.difference_update(unwanted)
        try:
            async with self._commands:
                await self._pubsub.unsubscribe(*unwanted)
        except (RedisError, OSError) as exc:
            _log.debug("unsubscribing from %s failed: %r", unwanted, exc)

    async def _read(self) -> None:
        """Deliver messages to the waiting heads until nothing is subscribed."""
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= self._next_sweep:
                self._next_sweep = loop.time() + _SWEEP_INTERVAL
                await self._sweep()
            try:
                message = await self._pubsub.get_message(timeout=_SWEEP_INTERVAL)
            except (RedisError, OSError) as exc:
                # The connection broke. redis-py resubscribes when it reconnects; the
                # waiters are woken then (messages may have been lost meanwhile), not
                # now, while the server may still be down.
                _log.debug("the notification connection failed: %r", exc)
                self._confirmed.clear()
                if await self._close_if_idle():
                    return
                await asyncio.sleep(0.05)
                continue
            if message is None:
                # A second without traffic and nobody waiting: give the connection
                # back. The next watch starts a reader again.
                if not self._events and await self._close_if_idle():
                    return
                continue
            kind, channel = _text(message["type"]), _text(message["channel"])
            if kind == "message":
                # A release names the process first in line, which alone tries at
                # once; an empty message (nobody in line, or a semaphore) wakes all.
                addressee = _text(message["data"])
                if addressee and addressee != self.id:
                    continue
                for event in self._events.get(channel, ()):
                    event.set()
            elif kind == "subscribe":
                self._confirmed.add(channel)
                confirmation = self._confirmations.pop(channel, None)
                if confirmation is not None:
                    if not confirmation.done():
                        confirmation.set_result(None)
                else:
                    # A resubscription after a reconnect: a release may have been
                    # published while the connection was down, so re-check now.
                    for event in self._events.get(channel, ()):
                        event.set()

    async def _close_if_idle(self) -> bool:
        """Give the connection back to the pool if nobody waits; say whether it did."""
        async with self._commands:
            if self._events:
                return False
            # Forgotten before awaiting anything: a waiter arriving meanwhile must
            # subscribe anew, not trust a subscription about to go, and its
            # subscription must start a new reader (this one is ending).
            self._reader = None
            self._subscribed.clear()
            self._confirmed.clear()
            for confirmation in self._confirmations.values():
                confirmation.cancel()
            self._confirmations.clear()
            await self._pubsub.aclose()  # reconnects by itself at the next SUBSCRIBE
            return True


_background: set[asyncio.Task[None]] = set()


def _in_background(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as a task, logging a Redis failure and keeping a reference."""

    async def run() -> None:
        try:
            await coro
        except (RedisError, OSError) as exc:
            _log.debug("leaving a line of waiters failed: %r", exc)

    task = asyncio.ensure_future(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_notifiers: weakref.WeakKeyDictionary[Any, Notifier] = weakref.WeakKeyDictionary()


def waiting_for(client: Any, channels: tuple[str, ...]) -> Waiting | None:
    """The process's queue of waiters for the lock on ``channels``, if anyone waits."""
    notifier = _notifiers.get(client)
    return None if notifier is None else notifier._queues.get(channels)


def notifier_for(client: Any) -> Notifier | None:
    """The client's notifier, made on first use; ``None`` if it has no usable pub/sub."""
    if hasattr(client, "get_node_from_key"):  # a cluster client
        return None
    max_connections = getattr(client.connection_pool, "max_connections", None)
    if max_connections is not None and max_connections < 2:
        return None  # the subscriber would take the only connection: poll instead
    notifier = _notifiers.get(client)
    if notifier is None:
        notifier = _notifiers[client] = Notifier(client)
    return notifier
