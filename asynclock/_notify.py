"""Wake-up by notification: a release publishes, the waiters of that name wake at once.

One :class:`Notifier` per client multiplexes every name and every waiting coroutine
of the process onto one pub/sub connection. A waiter subscribes, and waits for the
server's confirmation, *before* it checks the lock again, so a release between its
failed try and its subscription is never missed. Subscriptions follow the waiters
lazily: a channel is subscribed when a waiter first needs it, and about a second
after nobody waits on it any more it is unsubscribed (and the connection goes back to
the pool after another second without any). Messages are at most once (a reconnect
loses some): waiters keep a bounded fallback re-check, so a lost message costs
latency, never a hang.

Across processes, a release wakes one process, not all: a refused waiter puts its
process (this notifier's :attr:`~Notifier.id`) in the lock's line in Redis, and the
release publishes the id of the first process in line whose place has not lapsed, or
an empty message (wake everyone) when nobody stands in line. A notifier ignores a
message naming another process: the line only orders wake-ups, so a frozen or
crashed process first in line costs the others a re-check, and its place lapses
within two seconds.

On Redis Cluster a lock's channel shares its keys' hash tag, and so their slot: the
release scripts publish it with ``SPUBLISH`` to that slot's shard only, and a
:class:`ShardedNotifier` keeps one :class:`Notifier` per shard node that has waiters,
each on a connection of its own to that node, subscribed with ``SSUBSCRIBE``. The
line across processes and the hand-over inside one work there exactly as on one
server. A server before Redis 7.0 has no sharded pub/sub: its cluster clients poll.

Clients whose pool holds a single connection poll too: the subscriber would take it
from the waiters.

This module knows nothing of locks: the local queue of waiters (``_queue.py``) uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ._aio import spawn
from ._scripts import is_cluster, refresh_slots

_log = logging.getLogger("asynclock")

# The longest the head of a queue waits for the server to confirm its subscription.
_CONFIRM_TIMEOUT = 1.0
# How often the reader unsubscribes from channels nobody waits on (seconds); after
# this long without any message and without waiters, the connection goes back too.
_SWEEP_INTERVAL = 1.0


class Notifications(Protocol):
    """What the waiters of a client use to hear of releases: a notifier."""

    #: This process's id in the lines of waiters, and in release messages.
    id: str
    #: The event loop it serves: its subscriptions, reader and futures live there.
    loop: asyncio.AbstractEventLoop

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Have ``event`` set by releases on ``channels``, once the server confirms."""

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Stop setting ``event`` on releases on ``channels``."""


# The pub/sub message types of plain and of sharded channels.
_MESSAGES = frozenset({"message", "smessage"})
_SUBSCRIBED = frozenset({"subscribe", "ssubscribe"})


class Notifier:
    """One pub/sub connection's subscriber, shared by every waiter in the process.

    Subscriptions follow the waiters lazily: a channel is subscribed when a waiter
    first needs it (concurrent needs are sent as one ``SUBSCRIBE``), and unsubscribed
    by the reader's sweep once nobody has waited on it for about a second, so that a
    busy lock does not pay a ``SUBSCRIBE``/``UNSUBSCRIBE`` pair at every hand-over.

    ``sharded``: the channels are a cluster node's sharded channels (``SSUBSCRIBE``,
    one command per slot); ``on_moved`` is told of a channel the node stopped serving
    (its slot moved to another node), with the events still waiting on it.
    """

    def __init__(
        self,
        pubsub: Any,
        id: str | None = None,
        *,
        sharded: bool = False,
        on_moved: Callable[[str, set[asyncio.Event]], None] | None = None,
    ) -> None:
        #: This process's id in the lines of waiters, and in release messages.
        self.id = id or secrets.token_hex(8)
        #: The event loop it serves: its subscriptions, reader and futures live there.
        self.loop = asyncio.get_running_loop()
        #: Set when the server refused a subscription outright (no sharded pub/sub).
        self.refused = False
        self._pubsub = pubsub
        self._sharded = sharded
        self._on_moved = on_moved
        self._events: dict[str, set[asyncio.Event]] = {}  # the channels wanted now
        self._subscribed: set[str] = set()  # SUBSCRIBE sent, no UNSUBSCRIBE since
        self._confirmed: set[str] = set()  # ... and confirmed by the server
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        # UNSUBSCRIBE sent, its confirmation not read yet: any other confirmation of
        # leaving a sharded channel comes from the node (its slot moved away).
        self._leaving: Counter[str] = Counter()
        self._reader: asyncio.Task[None] | None = None
        self._to_subscribe: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        # Orders the commands that change subscriptions, and connecting: taken only
        # when there is something to send, never by a waiter whose channel is known.
        self._commands = asyncio.Lock()
        self._next_sweep = 0.0

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
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
                self._sender = spawn(self._send_subscriptions(), "subscribing to releases")
        try:
            # Bounded: without a confirmation the head still re-checks by polling.
            if unconfirmed:
                await asyncio.wait(unconfirmed, timeout=_CONFIRM_TIMEOUT)
        except BaseException:
            self.unwatch(channels, event)
            raise

    async def _send_subscriptions(self) -> None:
        """Subscribe to every channel asked for, in batches; start the reader."""
        while self._to_subscribe:
            batch, self._to_subscribe = self._to_subscribe, []
            try:
                async with self._commands:
                    await self._send("subscribe", batch)
            except (RedisError, OSError) as exc:
                # The waiters re-check by polling; the next one to wait asks again.
                # Told now, not after the confirmation's timeout.
                _log.debug("subscribing to %s failed: %r", batch, exc)
                self._subscribed.difference_update(batch)
                self.refused = self.refused or _unknown_command(exc)
                self._release_confirmations(batch)
                continue
            if self._reader is None or self._reader.done():
                self._next_sweep = asyncio.get_running_loop().time() + _SWEEP_INTERVAL
                self._reader = spawn(self._read(), "reading release notifications")

    def _release_confirmations(self, channels: Iterable[str]) -> None:
        """End the waits for confirmations of ``channels``: none is coming."""
        for channel in channels:
            confirmation = self._confirmations.pop(channel, None)
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(None)

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
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
        if self._sharded:
            self._leaving.update(unwanted)
        try:
            async with self._commands:
                await self._send("unsubscribe", unwanted)
        except (RedisError, OSError) as exc:
            _log.debug("unsubscribing from %s failed: %r", unwanted, exc)
            self._leaving.subtract(unwanted)
            self._leaving = +self._leaving  # no confirmation is coming

    async def _send(self, command: str, channels: Iterable[str]) -> None:
        """``SUBSCRIBE`` or ``UNSUBSCRIBE`` (or their sharded forms)."""
        prefix = "s" if self._sharded else ""
        await getattr(self._pubsub, f"{prefix}{command}")(*channels)

    async def _read(self) -> None:
        """Deliver messages to the waiting heads until nothing is subscribed."""
        try:
            await self._deliver()
        except Exception:
            # Unexpected (a client library bug, say): forget the subscriptions, so that
            # the next waiter subscribes anew and starts a reader; spawn logs the error.
            self._subscribed.clear()
            self._confirmed.clear()
            self._leaving.clear()
            raise

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= self._next_sweep:
                self._next_sweep = loop.time() + _SWEEP_INTERVAL
                await self._sweep()
            try:
                message = await self._pubsub.get_message(timeout=_SWEEP_INTERVAL)
            except ResponseError as exc:
                # The server refused a command: a SSUBSCRIBE before Redis 7.0. Said now,
                # so that the waiters poll instead of waiting for a confirmation.
                _log.debug("the server refused a subscription: %r", exc)
                self.refused = self.refused or _unknown_command(exc)
                self._release_confirmations(list(self._confirmations))
                if self._sharded and not self.refused:
                    # MOVED: some slot is another node's now. Follow every channel
                    # still unconfirmed there (the others' confirmations are lost
                    # with it: they follow too, at no cost but a new subscription).
                    for channel in [c for c in self._subscribed if c not in self._confirmed]:
                        self._moved(channel)
                continue
            except (RedisError, OSError) as exc:
                # The connection broke. redis-py resubscribes when it reconnects; the
                # waiters are woken then (messages may have been lost meanwhile), not
                # now, while the server may still be down.
                _log.debug("the notification connection failed: %r", exc)
                self._confirmed.clear()
                self._leaving.clear()
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
            if kind in _MESSAGES:
                # A release names the process first in line, which alone tries at
                # once; an empty message (nobody in line, or a semaphore) wakes all.
                addressee = _text(message["data"])
                if addressee and addressee != self.id:
                    continue
                for event in self._events.get(channel, ()):
                    event.set()
            elif kind == "sunsubscribe":
                if self._leaving[channel]:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif channel in self._subscribed:
                    self._moved(channel)
            elif kind in _SUBSCRIBED:
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

    def _moved(self, channel: str) -> None:
        """The node stopped serving ``channel`` (its slot moved), unasked: follow it."""
        self._subscribed.discard(channel)
        self._confirmed.discard(channel)
        if self._sharded:
            self._pubsub.forget(channel)
        events = self._events.pop(channel, set())
        for event in events:
            event.set()  # a release may have gone to the new owner meanwhile: re-check
        if self._on_moved is not None and events:
            self._on_moved(channel, events)

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
            self._leaving.clear()
            for confirmation in self._confirmations.values():
                confirmation.cancel()
            self._confirmations.clear()
            await self._pubsub.aclose()  # reconnects by itself at the next SUBSCRIBE
            return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unknown_command(error: BaseException) -> bool:
    """Whether the server does not know the command (``SSUBSCRIBE`` before 7.0)."""
    return isinstance(error, ResponseError) and "unknown command" in str(error).lower()


def _by_slot(channels: Iterable[str]) -> list[list[str]]:
    """``channels`` grouped by cluster slot: a sharded command takes one slot's."""
    groups: defaultdict[int, list[str]] = defaultdict(list)
    for channel in channels:
        groups[key_slot(channel.encode())].append(channel)
    return list(groups.values())


class _ShardSubscriber:
    """A pub/sub connection to one cluster node, for its sharded channels.

    What a :class:`Notifier` needs of a pub/sub object (``ssubscribe``,
    ``sunsubscribe``, ``get_message``, ``aclose``), on a connection of the node's
    kind. A node takes ``SSUBSCRIBE`` one slot at a time, so a batch of channels of
    many slots is many commands: written at once here, as one write (sent one by one
    they cost a turn of the event loop each, which on a busy loop outlasts a waiter's
    confirmation timeout). It re-subscribes its channels when it reconnects.
    """

    def __init__(self, node: Any) -> None:
        self._node = node
        self._connection: Any = None
        self._channels: set[str] = set()  # subscribed, as far as we know
        # The reader and the subscribing task both (re)connect on need: one at a time,
        # so that they share one connection and subscribe it once.
        self._connecting = asyncio.Lock()

    async def _connected(self) -> Any:
        connection = self._connection
        if connection is not None and connection.is_connected:
            return connection
        async with self._connecting:
            connection = self._connection
            if connection is None:
                connection = self._connection = self._node.connection_class(
                    **self._node.connection_kwargs
                )
            if not connection.is_connected:
                await connection.connect()
                if self._channels:  # a reconnect: subscribed anew, confirmed as before
                    await self._write(connection, "SSUBSCRIBE", self._channels)
            return connection

    @staticmethod
    async def _write(connection: Any, command: str, channels: Iterable[str]) -> None:
        commands = [(command, *group) for group in _by_slot(channels)]
        await connection.send_packed_command(connection.pack_commands(commands), False)

    async def ssubscribe(self, *channels: str) -> None:
        """Subscribe to ``channels``; their confirmations come as messages."""
        connection = await self._connected()
        self._channels.update(channels)
        try:
            await self._write(connection, "SSUBSCRIBE", channels)
        except BaseException:
            self._channels.difference_update(channels)
            raise

    async def sunsubscribe(self, *channels: str) -> None:
        """Unsubscribe from ``channels``."""
        self._channels.difference_update(channels)
        if self._connection is not None and self._connection.is_connected:
            await self._write(self._connection, "SUNSUBSCRIBE", channels)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or ``None`` after ``timeout`` seconds without any."""
        connection = await self._connected()
        try:
            reply = await connection.read_response(
                timeout=timeout, disconnect_on_error=False, push_request=True
            )
        except (RedisError, OSError) as exc:
            if not isinstance(exc, ResponseError):
                # The connection broke: the next call reconnects and subscribes anew.
                await connection.disconnect()
            raise
        if not isinstance(reply, list) or len(reply) < 3:
            return None
        return {"type": _text(reply[0]), "channel": reply[1], "data": reply[2]}

    def forget(self, channel: str) -> None:
        """Stop re-subscribing ``channel`` at a reconnect: its node no longer serves it."""
        self._channels.discard(channel)

    async def aclose(self) -> None:
        """Close the connection; the next subscription opens another."""
        self._channels.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()


class ShardedNotifier:
    """The notifier of a Redis Cluster client: a :class:`Notifier` per shard node.

    A release is published (``SPUBLISH``) on the node that owns the lock's slot, so a
    waiter subscribes there, on a connection of its own to that node made on first
    need: one node for the names of one slot, each name's own for a MultiLock across
    slots.
    """

    def __init__(self, client: Any) -> None:
        #: This process's id in the lines of waiters, on every node.
        self.id = secrets.token_hex(8)
        #: The event loop it serves.
        self.loop = asyncio.get_running_loop()
        self._client = client
        self._nodes: dict[str, Notifier] = {}  # by node name, host:port
        # The events still watched, by channel: a channel followed to its new node
        # takes along only those, not those whose waiters left meanwhile.
        self._wanted: dict[str, set[asyncio.Event]] = {}

    @property
    def refused(self) -> bool:
        """Whether a node refused sharded subscriptions (a server before 7.0)."""
        return any(notifier.refused for notifier in self._nodes.values())

    def _node_notifier(self, channel: str) -> Notifier | None:
        """The notifier of the node that owns ``channel``'s slot now, if known."""
        try:
            node = self._client.get_node_from_key(channel)
        except (RedisClusterException, RedisError) as exc:  # a slot not covered now
            _log.debug("no node for channel %s: %r", channel, exc)
            return None
        if node is None:
            return None
        notifier = self._nodes.get(node.name)
        if notifier is None:
            notifier = self._nodes[node.name] = Notifier(
                _ShardSubscriber(node), self.id, sharded=True, on_moved=self._follow
            )
        return notifier

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Have ``event`` set by releases on ``channels``, once their nodes confirm."""
        for channel in channels:
            self._wanted.setdefault(channel, set()).add(event)
        try:
            # A client that has sent nothing yet knows no node: one that watches before
            # its first command (a single flight's follower) reads the slot map first.
            # Once read, this returns at once; if it fails, the waiter polls.
            with contextlib.suppress(RedisClusterException, RedisError, OSError):
                await self._client.initialize()
            await self._watch_on_nodes(channels, event)
        except BaseException:
            self.unwatch(channels, event)
            raise

    async def _watch_on_nodes(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        by_node: dict[Notifier, list[str]] = {}
        for channel in channels:
            notifier = self._node_notifier(channel)
            if notifier is not None:  # else the waiter re-checks by polling
                by_node.setdefault(notifier, []).append(channel)
        if len(by_node) == 1:  # the names of one slot: the usual case
            notifier, on_node = next(iter(by_node.items()))
            await notifier.watch(tuple(on_node), event)
        elif by_node:  # a MultiLock across slots
            await asyncio.gather(*(n.watch(tuple(c), event) for n, c in by_node.items()))

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        """Stop setting ``event``, on whichever node it was watching."""
        for channel in channels:
            wanted = self._wanted.get(channel)
            if wanted is not None:
                wanted.discard(event)
                if not wanted:
                    del self._wanted[channel]
        for notifier in self._nodes.values():
            notifier.unwatch(channels, event)

    def _follow(self, channel: str, events: set[asyncio.Event]) -> None:
        """Subscribe ``events`` to ``channel`` on the node that owns it now."""
        spawn(self._rewatch(channel, events), f"following channel {channel} to its node")

    async def _rewatch(self, channel: str, events: set[asyncio.Event]) -> None:
        # The client's map of slots may not know of the move yet: read it anew.
        await refresh_slots(self._client)
        for event in events:
            if event not in self._wanted.get(channel, ()):
                continue  # its waiter left meanwhile
            await self._watch_on_nodes((channel,), event)
            if event not in self._wanted.get(channel, ()):  # left while subscribing
                for notifier in self._nodes.values():
                    notifier.unwatch((channel,), event)


_Any = Notifier | ShardedNotifier
_notifiers: weakref.WeakKeyDictionary[Any, _Any] = weakref.WeakKeyDictionary()


def notifier_for(client: Any) -> Notifications | None:
    """The client's notifier on the running loop; ``None`` if it has no usable pub/sub.

    Made on first use, and anew when the client is used from another event loop (a
    script calling ``asyncio.run`` again with a module-level client): what the old one
    knew of its subscriptions died with its loop, and trusting it would leave the new
    loop's waiters without wake-ups.
    """
    if is_cluster(client):
        notifier = _notifiers.get(client)
        if notifier is None or notifier.loop is not asyncio.get_running_loop():
            notifier = _notifiers[client] = ShardedNotifier(client)
        return None if notifier.refused else notifier
    max_connections = getattr(client.connection_pool, "max_connections", None)
    if max_connections is not None and max_connections < 2:
        return None  # the subscriber would take the only connection: poll instead
    notifier = _notifiers.get(client)
    if notifier is None or notifier.loop is not asyncio.get_running_loop():
        notifier = _notifiers[client] = Notifier(client.pubsub())
    return notifier


class Heard:
    """A watcher's subscription through a notifier: an event set by every release
    (or other message) heard on its channels."""

    def __init__(self) -> None:
        #: Set by every message heard; cleared by :meth:`next`.
        self.event = asyncio.Event()

    async def next(self, seconds: float) -> None:
        """Return at the next message heard, or after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.event.wait()
        self.event.clear()


@contextlib.asynccontextmanager
async def heard(notifier: Notifications, channels: tuple[str, ...]) -> AsyncIterator[Heard]:
    """Subscribe to ``channels`` through ``notifier`` for as long as the block runs."""
    subscription = Heard()
    await notifier.watch(channels, subscription.event)
    try:
        yield subscription
    finally:
        notifier.unwatch(channels, subscription.event)
