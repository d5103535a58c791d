"""``SingleFlight``: one caller runs a job; every caller asking meanwhile gets its outcome.

The leader is whoever holds the flight's lease: a :class:`~asynclock.Mutex` on its
name, with all it promises (one holder, a watchdog extending the lease, the job
cancelled and ``LockLost`` raised when the lease is lost, fencing tokens). Before it
lets the lease go, the leader lands the job's outcome beside it (``land.lua``), tagged
with the lease's fencing token, and wakes the callers waiting on the flight's channel;
they read it (``look.lua``).

Which outcome a caller may take is decided by fences alone. On arrival it notes its
*floor*: the fence of the lease under way, or the next one if nobody leads. It takes an
outcome whose fence is at least that: the flight it found at work, or one begun after
it came; never one finished before it came, unless ``keep_for`` keeps that for late
arrivals. A caller that finds nobody leading takes the lease itself and looks once
more before it runs the job: a flight may have landed between its look and its lease.

Inside one process, callers on one name share one flight: one task waits (or leads)
for all of them, and one subscription wakes it. A follower subscribes before the look
that decides to wait, so no landing after it is missed; a leader needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from ._aio import complete_despite_cancel, wait_done, within
from ._errors import FlightFailed, LockBackendError, LockLost, LockNotAcquired
from ._lease import Lease
from ._mutex import Mutex
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._resource import BACKEND_ERRORS
from ._validate import check_count, check_name, check_optional_seconds, check_prefix

_T = TypeVar("_T")
_log = logging.getLogger("asynclock")

#: The largest outcome accepted by default, in bytes once encoded.
MAX_OUTCOME: Final = 1024 * 1024
#: The largest outcome a server takes (its ``proto-max-bulk-len`` default).
_LARGEST_OUTCOME: Final = 512 * 1024 * 1024
#: How long a landed outcome stays for the callers that waited for it (ms): they read
#: it when woken, or at their next re-check if the message was lost.
_GRACE_MS: Final = 10_000
#: The longest a waiting caller goes without looking again, with a subscription (a lost
#: message costs this much) and without one (it polls).
_RECHECK: Final = 1.0
_POLL: Final = 0.05
#: How soon a caller looks again when it found a leader that has landed its outcome
#: and is releasing its lease (a round trip away; no message marks it), so many times.
_RELEASING_LOOK: Final = 0.002
_RELEASING_LOOKS: Final = 20

# What look.lua replies first.
_LANDED, _LEADING = 2, 1
# How an outcome is encoded: a tag byte, then the serialised value or the error.
_VALUE, _ERROR = b"v", b"e"


class Serializer(Protocol):
    """What ``SingleFlight(serializer=...)`` takes: the ``json`` module's two calls."""

    def dumps(self, value: Any, /) -> str | bytes:
        """Encode a job's value."""

    def loads(self, data: bytes, /) -> Any:
        """Decode what :meth:`dumps` made."""


class SingleFlight:
    """One caller runs a job; every caller that asks meanwhile, in any process, gets its
    outcome instead of running it again.

    ::

        flight = SingleFlight(client, "report:42", ttl=30.0, timeout=20.0)
        report = await flight.run(build_report, 42)      # runs once across every process

    The caller that finds nobody at work leads: it holds a lease on the flight's name
    (a :class:`~asynclock.Mutex`'s, auto-extended while the job runs), runs the job, and
    lands its outcome, a value or an error, for everyone who asked meanwhile; then it
    releases the lease. Followers wait for it woken by a notification. If the leader
    crashes or loses its lease, its followers notice when the lease is gone (at once
    if it was released, within ``ttl`` if it crashed): one of them leads and runs the
    job, the others follow it.

    Values travel as JSON by default, or with ``serializer`` (an object with ``dumps``
    and ``loads``, both ends alike); nothing is ever unpickled. An error reaches
    followers as :class:`~asynclock.FlightFailed` with the error's type name and
    message (the leader's own callers get the exception itself).

    In one process, concurrent callers on one name share one flight: the first
    caller's job and ``timeout`` serve them all, and one wait on Redis.

    :param client: a ``redis.asyncio`` client (standalone, Sentinel or Cluster)
    :param name: the flight's name: callers on one name share outcomes
    :param ttl: the leader's lease, in seconds: a crashed leader is replaced after
        this long at most
    :param timeout: the longest a caller waits for another's job, in seconds, from its
        arrival (default ``None``: as long as it takes); then ``LockNotAcquired``. A
        caller that leads runs the job to its end
    :param keep_for: how long a value stays for callers arriving after the flight,
        in seconds (default ``None``: it goes to those that waited only); errors are
        never kept
    :param serializer: how values are encoded (default: the ``json`` module)
    :param max_outcome: the largest encoded value, in bytes (default 1 MiB); a larger
        one fails the flight with ``ValueError`` at the leader, ``FlightFailed`` at
        the followers
    :param replicas: replicas that must acknowledge the leader's lease (see ``Mutex``)
    :param replica_timeout: how long to wait for them, in seconds
    :param prefix: prepended to every key (default ``"asynclock:"``)
    :raises TypeError: an argument has the wrong type (checked before any command)
    :raises ValueError: an argument is out of range (checked before any command)
    """

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        ttl: float = 30.0,
        timeout: float | None = None,
        keep_for: float | None = None,
        serializer: Serializer | None = None,
        max_outcome: int = MAX_OUTCOME,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._name = check_name(name)
        prefix = check_prefix(prefix)
        self._timeout, self._keep_ms, self._serializer, self._max_outcome = check_flight(
            timeout, keep_for, serializer, max_outcome
        )
        self._backend = backend_for(client)
        self._client = self._backend.client
        self._mutex = Mutex(
            self._backend,
            self._name,
            ttl=ttl,
            blocking=False,
            replicas=replicas,
            replica_timeout=replica_timeout,
            prefix=prefix,
        )
        self._outcomes = self._backend.outcomes(prefix, self._name)
        # Woken by a release of the lease, and by a landing.
        self._channels = self._outcomes.channels

    def __repr__(self) -> str:
        return f"<SingleFlight {self._name!r}>"

    @property
    def name(self) -> str:
        """The flight's name."""
        return self._name

    async def run(self, fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` once for every caller asking meanwhile, in any
        process; return its value.

        :raises FlightFailed: the job raised where another process ran it
        :raises LockNotAcquired: ``timeout`` passed while another caller's job ran
        :raises LockLost: this caller led, and its lease was lost while the job ran
            (the job was cancelled; a follower leads and runs it again)
        :raises LockBackendError: Redis failed
        :raises ValueError: this caller led, and the value is larger than
            ``max_outcome`` once encoded
        :raises TypeError: ``fn`` is not callable; or the serializer cannot encode the
            value (from the serializer)

        Whatever ``fn`` raises is raised as is to the callers of the process that ran
        it. Cancelling a caller leaves the flight to the others; cancelling the last
        caller of the process cancels its part (a job it runs, whose lease is then
        released, so another process's caller leads).
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        flights = _flights.get(self._client)
        if flights is None:
            flights = _flights[self._client] = {}
        key = self._channels[1]
        flight = flights.get(key)
        if flight is None or flight.task.done() or flight.task.get_loop() is not _loop():
            flight = flights[key] = _Flight(asyncio.ensure_future(self._fly(fn, args, kwargs)))
            flight.task.add_done_callback(lambda _task: _forget(flights, key, flight))
        flight.callers += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.callers -= 1
            if not flight.callers and not flight.task.done():
                # The last caller left (cancelled): nobody waits for this flight here.
                # Forgotten first: a caller coming while it winds down (its lease
                # released) starts a flight of its own, rather than share a cancelled one.
                _forget(flights, key, flight)
                flight.task.cancel()
                await wait_done(flight.task)

    async def _fly(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        """Follow the flight under way, or lead one; return the outcome's value."""
        started = time.monotonic()
        notifier = self._backend.notifications()
        woken = asyncio.Event()
        watching = False
        releasing = 0  # looks that found the leader landed and releasing
        try:
            floor = ""
            while True:
                woken.clear()
                kind, floor, found = await self._look(floor)
                if kind == _LANDED:
                    return self._open(found)
                if kind != _LEADING:
                    led = await self._lead(floor, fn, args, kwargs)
                    if led is not _REFUSED:
                        return led
                    continue  # another caller took the lease first: follow it
                if notifier is not None and not watching:
                    # Subscribed before the look that decides to wait, so that no
                    # landing or release after it is missed (a leader needs none).
                    await notifier.watch(self._channels, woken)
                    watching = True
                    if self._backend.notifications() is None:
                        # Refused (a cluster of servers before Redis 7.0): poll.
                        notifier.unwatch(self._channels, woken)
                        notifier, watching = None, False
                    continue
                if found == 0:  # the leader has landed, and is releasing: look again soon
                    releasing += 1
                    pause = _POLL if releasing > _RELEASING_LOOKS else _RELEASING_LOOK
                else:
                    pause = min(_RECHECK if notifier is not None else _POLL, found / 1000 + 0.002)
                if self._timeout is not None:
                    left = started + self._timeout - time.monotonic()
                    if left <= 0:
                        raise LockNotAcquired(self._name, time.monotonic() - started)
                    pause = min(pause, left)
                with contextlib.suppress(TimeoutError):
                    await within(woken.wait(), max(pause, 0.001))
        finally:
            if watching:
                assert notifier is not None
                notifier.unwatch(self._channels, woken)

    async def _look(self, floor: str) -> tuple[int, str, Any]:
        """Read the flight (look.lua): what was found, the caller's floor, and the
        outcome found or the leader's time to live in milliseconds."""
        return await self._mutex._call(
            self._outcomes.look(self._client, floor), "look at the outcome of"
        )

    async def _lead(
        self, floor: str, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        """Take the lease and run the job, unless a flight landed meanwhile; return its
        value, or ``_REFUSED`` if another caller holds the lease."""
        try:
            lease = await self._mutex.__aenter__()
        except LockNotAcquired:
            return _REFUSED
        try:
            value = await self._as_leader(lease, floor, fn, args, kwargs)
        except BaseException as exc:
            try:
                await self._mutex.__aexit__(type(exc), exc, exc.__traceback__)
            finally:
                # Maybe nothing landed: wake the followers, so that one leads now.
                await complete_despite_cancel(self._wake_followers())
            raise
        try:
            await self._mutex.__aexit__(None, None, None)
        except (LockLost, LockBackendError) as exc:
            # The outcome landed: every caller has it. A lease lost or a release failed
            # after that is no failure of theirs (what is left expires within its TTL).
            _log.warning("single flight %r: after its outcome landed, %s", self._name, exc)
        return value

    async def _wake_followers(self) -> None:
        with contextlib.suppress(*BACKEND_ERRORS):
            await self._outcomes.wake(self._client)

    async def _as_leader(
        self,
        lease: Lease,
        floor: str,
        fn: Callable[..., Awaitable[Any]],
        args: Any,
        kwargs: Any,
    ) -> Any:
        kind, _, found = await self._look(floor)
        if kind == _LANDED:  # a flight landed between our look and our lease
            return self._open(found)
        try:
            value = await fn(*args, **kwargs)
            encoded = self._encode(value)
        except Exception as exc:
            # Told to the followers if the lease allows; the job's error is what its
            # callers here need, so a failed landing does not replace it.
            with contextlib.suppress(LockLost, LockBackendError):
                await self._land(lease, _error(exc), keep=False)
            raise
        await self._land(lease, encoded, keep=True)
        return value

    def _encode(self, value: Any) -> bytes:
        data = self._serializer.dumps(value)
        encoded = _VALUE + (data.encode() if isinstance(data, str) else bytes(data))
        if len(encoded) - 1 > self._max_outcome:
            raise ValueError(
                f"single flight {self._name!r}: the value is {len(encoded) - 1} bytes"
                f" encoded, more than max_outcome={self._max_outcome}"
            )
        return encoded

    async def _land(self, lease: Lease, outcome: bytes, *, keep: bool) -> None:
        keep_ms = self._keep_ms if keep else 0
        landing = self._outcomes.land(
            self._client, lease.token, lease.fencing_token, outcome, keep_ms, _GRACE_MS
        )
        if not await self._mutex._call(landing, "land the outcome of"):
            raise LockLost(self._name, "the lease was gone before the outcome was landed")

    def _open(self, outcome: Any) -> Any:
        """The value of a landed ``outcome``; raise ``FlightFailed`` for an error."""
        # A client with decode_responses=True reads it as text (the serializer's
        # output must then be UTF-8).
        data = outcome.encode() if isinstance(outcome, str) else bytes(outcome)
        if data[:1] == _ERROR:
            error_type, message = json.loads(data[1:])
            raise FlightFailed(self._name, error_type, message)
        return self._serializer.loads(data[1:])


class _Flight:
    """This process's part in one flight: the task that follows or leads it, and how
    many callers wait for that task."""

    __slots__ = ("callers", "task")

    def __init__(self, task: asyncio.Future[Any]) -> None:
        self.task = task
        self.callers = 0
        # Its error is every caller's; retrieved here too, for a flight left by all.
        task.add_done_callback(_retrieve)


_REFUSED: Final = object()
_flights: weakref.WeakKeyDictionary[Any, dict[str, _Flight]] = weakref.WeakKeyDictionary()


def _forget(flights: dict[str, _Flight], key: str, flight: _Flight) -> None:
    if flights.get(key) is flight:
        del flights[key]


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _error(error: BaseException) -> bytes:
    return _ERROR + json.dumps([type(error).__name__, str(error)]).encode()


def check_flight(
    timeout: object, keep_for: object, serializer: object, max_outcome: object
) -> tuple[float | None, int, Serializer, int]:
    """Check a flight's own options; return the timeout, ``keep_for`` in milliseconds
    (0: not kept), the serializer and ``max_outcome``."""
    checked_timeout = check_optional_seconds(timeout, "timeout")
    keep = check_optional_seconds(keep_for, "keep_for")
    keep_ms = 0 if keep is None else max(1, round(keep * 1000))
    checked_max = check_count(max_outcome, "max_outcome")
    if checked_max > _LARGEST_OUTCOME:
        raise ValueError(f"max_outcome must be at most {_LARGEST_OUTCOME}, not {max_outcome}")
    return checked_timeout, keep_ms, _check_serializer(serializer), checked_max


def _check_serializer(serializer: object) -> Serializer:
    if serializer is None:
        return json
    for method in ("dumps", "loads"):
        if not callable(getattr(serializer, method, None)):
            raise TypeError(
                f"serializer must have callable dumps and loads, as the json module has;"
                f" {type(serializer).__name__} has no {method}"
            )
    return serializer  # type: ignore[return-value]
