"""``Election``: one leader among replicas, on a ``Mutex``'s lease, and who it is.

The lease is a :class:`~asynclock.Mutex`'s, with all it promises: one holder at a
time, a watchdog extending it, a body cancelled when it is lost, fencing tokens
(here: term numbers), notified waiters. An election adds the leader's identity,
announced beside the lease (``announce.lua``) and read with it in one step
(``leader.lua``): an announcement counts only while the token it names holds the
lease, so a crashed leader's identity is never reported after its lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from . import _events
from ._errors import LockLost, LockNotOwned
from ._lease import _MAX_REPEATED_CANCELS, _REPEATED_CANCEL_INTERVAL, Lease
from ._mutex import Mutex
from ._names import DEFAULT_PREFIX
from ._redis import backend_for
from ._retry import RetryStrategy
from ._validate import check_name, check_prefix, check_seconds

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: The longest identity accepted: it is stored and published with every term.
MAX_IDENTITY: Final = 1024
#: While a leader announces itself (one round trip after its election), ``leader()``
#: reads again this many times, this far apart, before it reports an unknown identity.
_ANNOUNCING_READS: Final = 5
_ANNOUNCING_PAUSE: Final = 0.005


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who leads an election.

    :ivar identity: the leader's ``identity``; ``None`` for a leader elected an
        instant ago that has not announced itself yet
    :ivar term: the term's number: its lease's fencing token, higher for every term
    :ivar since: when the term began, on the leader's ``time.time()``
    """

    identity: str | None
    term: int | None
    since: float | None


class Election:
    """One leader among the replicas that campaign on ``name``; observable by all.

    ::

        election = Election(client, "scheduler", identity="web-3:4711", ttl=10.0)
        await election.run(run_scheduler)        # lead when elected; campaign again if deposed
        async with election as term:             # or one term by hand
            print(term.fencing_token)            # the term number, increasing
        info = await election.leader()           # LeaderInfo(identity, term, since) or None
        async for leader in election.watch():    # every change of leader
            ...

    Leading is holding a :class:`~asynclock.Mutex` on ``name``: one leader at a time,
    the lease extended while the term lasts, the term's body cancelled (and
    ``LockLost`` raised) when the lease is lost, and campaigners woken by a
    notification when a leader steps down, so another takes over within milliseconds
    (after a crash: within ``ttl``).

    :param client: a ``redis.asyncio`` client (standalone, Sentinel or Cluster)
    :param name: the election's name
    :param identity: who this replica is, as others will read it (default
        ``"<hostname>:<pid>"``); a non-empty ``str`` of at most 1,024 characters
    :param ttl: the term's lease, in seconds: a crashed leader is replaced after this
        long at most
    :param retry: the campaign's pauses between tries (default: at every step-down
        and every 0.25 s)
    :param replicas: replicas that must acknowledge each term and extension (see
        ``Mutex``)
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
        identity: str | None = None,
        ttl: float = 10.0,
        retry: RetryStrategy | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._name = check_name(name)
        self.identity = _check_identity(
            f"{socket.gethostname()}:{os.getpid()}" if identity is None else identity
        )
        prefix = check_prefix(prefix)
        backend = backend_for(client)
        self._client = backend.client
        self._mutex = Mutex(
            backend,
            self._name,
            ttl=ttl,
            retry=retry,
            replicas=replicas,
            replica_timeout=replica_timeout,
            prefix=prefix,
        )
        self._leadership = backend.leadership(prefix, self._name)
        self._term: Lease | None = None
        self._body: asyncio.Task[Any] | None = None
        self._resigned = False  # resign() ended the current term
        self._stopped = 0  # ... and cancelled its body (run by another task) so many times
        self._campaigner: asyncio.Task[Any] | None = None  # the task campaigning or leading
        self._deposed: LockLost | None = None  # the latest term's loss

    def __repr__(self) -> str:
        return f"<Election {self._name!r} identity={self.identity!r}>"

    @property
    def name(self) -> str:
        """The election's name."""
        return self._name

    @property
    def leading(self) -> bool:
        """Whether this object leads now: its term's lease is live (a local check)."""
        return self._term is not None and self._term.owned

    # -- one term ----------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        """Campaign until elected, announce this replica, and return the term's lease.

        :raises RuntimeError: another task campaigns or leads with this object (one
            object per campaigning task: its term is its state)
        """
        task = asyncio.current_task()
        if self._campaigner is not None and not self._campaigner.done():
            raise RuntimeError(
                f"election {self._name!r}: another task campaigns or leads with this object"
            )
        self._campaigner = task
        try:
            lease = await self._mutex.__aenter__()
            try:
                await self._announce(lease)
            except BaseException as exc:
                await self._mutex.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException:
            self._campaigner = None
            raise
        self._term, self._body = lease, task
        self._resigned, self._stopped = False, 0
        self._emit("leader_elected", lease)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """End the term: step down (campaigners are woken at once), unless deposed."""
        term, body, resigned, stopped = self._term, self._body, self._resigned, self._stopped
        self._term, self._body, self._resigned, self._stopped = None, None, False, 0
        self._campaigner = None
        try:
            await self._mutex.__aexit__(exc_type, exc, tb)
        except LockLost as lost:
            self._deposed = lost  # the term's own loss, which run() survives
            if term is not None:
                self._emit("leader_deposed", term, lost)
            raise
        if stopped and exc_type is asyncio.CancelledError and body is not None:
            # resign() cancelled the body: the term simply ended, unless another
            # cancellation is pending too (then it goes on).
            for _ in range(stopped):
                pending = body.uncancel()
            return pending == 0
        if term is not None and not resigned:
            if term.lost is not None:
                # Lost under an error of the body's own, which propagates in its place.
                self._emit("leader_deposed", term, term.lost)
            else:
                self._emit("leader_resigned", term)
                await self._tell_watchers()
        return False

    async def _tell_watchers(self) -> None:
        """Tell watchers of a step-down (a release wakes only a line of waiters)."""
        await self._leadership.tell_watchers(self._client)

    async def _announce(self, lease: Lease) -> None:
        announcement = json.dumps(
            {
                "identity": self.identity,
                "term": lease.fencing_token,
                "since": time.time(),
                "token": lease.token,
            }
        )
        made = await self._mutex._call(
            self._leadership.announce(self._client, lease.token, announcement), "announce"
        )
        if not made:
            raise LockLost(self._name, "the lease was gone before the leader was announced")

    async def resign(self) -> None:
        """Step down now, if leading: the lease is released (campaigners are woken at
        once), and the term's body, if another task runs it, is cancelled; its
        ``async with`` ends without an error, and :meth:`run` returns ``None``.

        Called from the body itself, it releases, and the body goes on to its end
        without leading. It ends the current term only: a :meth:`run` between terms
        (campaigning) goes on; cancel ``run`` to stop campaigning.
        """
        term, body = self._term, self._body
        if term is None or not term.owned:
            return
        self._resigned = True
        self._emit("leader_resigned", term)
        try:
            with contextlib.suppress(LockNotOwned):  # lost meanwhile: no longer leading
                await term.release()
        finally:
            # Only a body still inside its term: one already leaving it (its own
            # release under way) must not have that release cancelled.
            if body is not None and body is not asyncio.current_task():
                self._stop_body(body, term)
            await self._tell_watchers()

    def _stop_body(self, body: asyncio.Task[Any], term: Lease) -> None:
        """Cancel ``term``'s body, while it is inside the term; on Python 3.11, again
        until it leaves it, as a lease's loss does (``Lease._cancel_holder``: 3.11's
        ``wait_for`` may drop a cancellation)."""
        if body.done() or self._term is not term:
            return
        body.cancel(msg="asynclock: resigned")
        self._stopped += 1
        if sys.version_info < (3, 12) and self._stopped <= _MAX_REPEATED_CANCELS:
            asyncio.get_running_loop().call_later(
                _REPEATED_CANCEL_INTERVAL, self._stop_body, body, term
            )

    async def run(
        self, fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T | None:
        """Lead with ``fn``: campaign, run ``fn`` while leading, and campaign again
        whenever the term is lost (``fn`` cancelled by the loss).

        Returns what ``fn`` returns (the term ends with it), or ``None`` once
        :meth:`resign` ended the term. An exception of ``fn`` ends the term and
        propagates; cancelling ``run`` steps down at once.
        """
        while True:
            try:
                async with self:
                    return await fn(*args, **kwargs)
                return None  # resigned: the body was stopped
            except LockLost as lost:
                if lost is not self._deposed:
                    raise  # fn's own (a lock of its own lost): it propagates
                continue  # deposed: campaign again

    # -- observing -----------------------------------------------------------------------

    async def leader(self) -> LeaderInfo | None:
        """Who leads now (``None``: nobody), read from the server in one step."""
        for _ in range(_ANNOUNCING_READS):
            reply = await self._mutex._call(
                self._leadership.leader(self._client), "read the leader of"
            )
            if reply is None:
                return None
            token, announcement = _text(reply[0]), reply[1]
            if announcement:
                fields = json.loads(_text(announcement))
                if fields.get("token") == token:
                    return LeaderInfo(fields["identity"], int(fields["term"]), fields["since"])
            await asyncio.sleep(_ANNOUNCING_PAUSE)  # elected an instant ago: announcing
        return LeaderInfo(None, None, None)

    async def watch(self, *, interval: float = 1.0) -> AsyncIterator[LeaderInfo | None]:
        """Yield who leads now, then every change of leader (``None``: nobody), as it
        happens.

        Woken by the announcements and step-downs, published on the election's own
        channels; read again every ``interval`` seconds as well, so that a change
        whose message was missed (a leader that crashed publishes nothing) is seen
        within ``interval`` or the lease's TTL. On a Redis Cluster client, or one whose
        pool has a single connection, or after its subscription failed, it reads every
        ``interval`` seconds only.
        """
        every = check_seconds(interval, "interval")
        # Subscribed before the first read: no change between them is missed.
        async with self._leadership.changes(self._client) as changes:
            last: object = _NOTHING_YET
            while True:
                now = await self.leader()
                if now != last:
                    last = now
                    yield now
                await changes.next(every)

    def _emit(self, event: str, lease: Lease, error: BaseException | None = None) -> None:
        if _events.listening(event):
            _events.emit(
                _events.LockEvent(
                    event=event,
                    lock=self._name,
                    key=self._mutex._resource.key,
                    token=lease.token,
                    fencing_token=lease.fencing_token,
                    duration=time.monotonic() - lease.acquired_at,
                    error=error,
                    at=_events.now(),
                    primitive="election",
                )
            )


_NOTHING_YET: Final = object()


def _check_identity(identity: object) -> str:
    if not isinstance(identity, str):
        raise TypeError(f"identity must be a str, not {type(identity).__name__}")
    if not identity or len(identity) > MAX_IDENTITY:
        raise ValueError(f"identity must have 1 to {MAX_IDENTITY} characters")
    return identity


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
