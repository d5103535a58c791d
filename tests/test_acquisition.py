"""One acquisition and the local hand-over, as client-side state machines, without a server.

``Acquisition`` (``asynclock/_acquire.py``) and ``LocalQueue`` (``asynclock/_queue.py``)
decide what the client does: which token it tries under, when it releases by token, when
it waits, when it gives up. Some of their paths a real server reaches only by timing: a
reply that arrives after the lease's deadline, a hand-over claimed by a release while its
head gives up, a cancellation at each await of the call. Here they are reached on purpose.

These are unit tests of client-side state machines, so fakes are the right tool: an
in-memory :class:`InMemoryResource` that mirrors the semantics of ``scripts/acquire.lua``
and ``scripts/release.lua`` (tested themselves against a real server in
``test_scripts.py``) and can hold any call in flight or make its reply late, and a
:class:`FakeNotifier` through which a test publishes a release. No Redis is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from asynclock import _acquire
from asynclock._acquire import Acquisition
from asynclock._aio import background_done
from asynclock._lease import Lease
from asynclock._queue import LOCAL_RUN, LocalQueue, Offer, join_queue, queue_for
from asynclock._resource import Grant, HandOver, Place, Successor
from asynclock._retry import LimitRetries, LinearBackoff
from asynclock._timing import LeasePolicy

_T = TypeVar("_T")

#: The longest any wait of these tests lasts before it counts as a failure.
BOUND = 5.0

# -- the fakes -------------------------------------------------------------------------------


@dataclass
class Hook:
    """What one call of the in-memory resource does besides its effect.

    :ivar block: an event the call waits for (bounded by ``BOUND``)
    :ivar delay: seconds the call takes
    :ivar error: raised once the wait is over
    :ivar reply_late: the effect happens at once and the reply is what waits (a reply
        late or lost); otherwise the command itself waits, and has no effect if it is
        cancelled meanwhile
    :ivar entered: set when the call arrives
    :ivar swallow_cancel: a cancellation during the wait is caught and the call
        returns as usual, as a client library that swallows one would
    """

    block: asyncio.Event | None = None
    delay: float = 0.0
    error: BaseException | None = None
    reply_late: bool = False
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    swallow_cancel: bool = False

    async def hold(self) -> None:
        try:
            if self.block is not None:
                async with asyncio.timeout(BOUND):
                    await self.block.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            if not self.swallow_cancel:
                raise
        if self.error is not None:
            raise self.error


@dataclass
class Call:
    """One call made to the in-memory resource, recorded when it arrives.

    :ivar token: the caller's token (for ``leave_line``, the waiter's id)
    :ivar applied: whether the call took effect (a call cancelled on its way did not)
    """

    method: str
    token: str
    successor: Successor | None = None
    at: float = field(default_factory=time.monotonic)
    applied: bool = False
    result: Any = None


class InMemoryResource:
    """A ``Resource`` over a dict, with the semantics of the acquire and release scripts.

    It protects the tests' faithfulness: each rule the client relies on is here as in
    ``scripts/acquire.lua`` and ``scripts/release.lua``.

    - an owner token (with an expiry on ``time.monotonic()``) and a fence counter per
      name; a refused acquire reports the holder's remaining TTL as ``retry_after``;
    - an acquire with the token that already holds gets the same lease back, with a
      fresh TTL and the same fence;
    - every release leaves a tombstone of its token, even when it held nothing: an
      acquire with a released token is refused, and so is a hand-over to one;
    - one line of waiting processes: a refused acquire with an id keeps (or takes) a
      place, a success does what its ``Place`` says, and a hand-over without
      ``jump_line`` is refused when another process is first (which moves the
      releasing process to the back of the line).

    Every call is recorded in :attr:`calls`; :meth:`hook` makes the n-th call of a
    method block, take time, fail, or have its reply arrive late. With ``expire=False``
    the leases it grants never expire, so that a test can tell what a release removed.
    """

    def __init__(self, names: tuple[str, ...] = ("a",), *, expire: bool = True) -> None:
        self.names = names
        self.description = ", ".join(names)
        self.key = f"lock:{names[0]}"
        self.channels = tuple(f"lock:{name}" for name in names)
        self.exclusive = True
        self.hands_over = True
        self.owners: dict[str, tuple[str, float | None]] = {}
        self.fences: dict[str, int] = dict.fromkeys(names, 0)
        self.tombstones: set[tuple[str, str]] = set()
        self.line: list[str] = []
        self.calls: list[Call] = []
        self._hooks: dict[tuple[str, int], Hook] = {}
        self._counts: Counter[str] = Counter()
        self._expire = expire

    # -- for the tests ---------------------------------------------------------------------

    def hook(self, method: str, nth: int = 1, **options: Any) -> Hook:
        """Give the ``nth`` call of ``method`` (from 1) a :class:`Hook`, and return it."""
        hook = self._hooks[method, nth] = Hook(**options)
        return hook

    def hold(self, token: str, ttl: float | None = None) -> None:
        """Let ``token`` hold every name (a holder the test stands in for)."""
        expiry = None if ttl is None else time.monotonic() + ttl
        for name in self.names:
            self.owners[name] = (token, expiry)
            self.fences[name] += 1

    def holder(self) -> str | None:
        """The token holding the first name, or ``None``."""
        return self._owner(self.names[0])

    def made(self, method: str) -> list[Call]:
        """The calls of ``method``, in order."""
        return [call for call in self.calls if call.method == method]

    def tokens(self, method: str) -> list[str]:
        """The tokens (or waiter ids) of the calls of ``method``, in order."""
        return [call.token for call in self.made(method)]

    # -- the state -------------------------------------------------------------------------

    def _owner(self, name: str) -> str | None:
        entry = self.owners.get(name)
        if entry is None:
            return None
        token, expiry = entry
        if expiry is not None and expiry <= time.monotonic():
            del self.owners[name]
            return None
        return token

    def _set(self, name: str, token: str, ttl_ms: int) -> None:
        expiry = time.monotonic() + ttl_ms / 1000 if self._expire else None
        self.owners[name] = (token, expiry)

    def _stand_in_line(self, waiter: str, *, keep: bool) -> None:
        if keep and waiter in self.line:
            return
        if waiter in self.line:
            self.line.remove(waiter)
        self.line.append(waiter)

    def _take_place(self, waiter: str, place: Place) -> None:
        if place is Place.BACK:
            self._stand_in_line(waiter, keep=False)
        elif place is Place.LEAVE and waiter in self.line:
            self.line.remove(waiter)

    def _acquire(self, token: str, ttl_ms: int, waiter: str, place: Place) -> Grant:
        ours = set()
        for name in self.names:
            owner = self._owner(name)
            if owner is not None and owner != token:
                if waiter:
                    self._stand_in_line(waiter, keep=True)
                expiry = self.owners[name][1]
                left = None if expiry is None else expiry - time.monotonic()
                return Grant(False, (), retry_after=left if left and left > 0 else None)
            if owner == token:
                ours.add(name)
            elif (name, token) in self.tombstones:
                return Grant(False, (), retry_after=None)  # a released token takes nothing
        fences = []
        for name in self.names:
            if name not in ours:
                self.fences[name] += 1
            self._set(name, token, ttl_ms)
            fences.append(self.fences[name])
        if waiter:
            self._take_place(waiter, place)
        return Grant(True, tuple(fences))

    def _release(self, token: str, to: Successor | None = None) -> HandOver:
        hand_over = to is not None
        not_our_turn = False
        if to is not None:
            for name in self.names:
                if self._owner(name) != token or (name, to.token) in self.tombstones:
                    hand_over = False
                    break
                first = self.line[0] if self.line else None
                if not to.jump_line and first is not None and first != to.waiter:
                    hand_over = False
                    not_our_turn = True
                    break
        if hand_over:
            assert to is not None
            fences = []
            for name in self.names:
                self._set(name, to.token, to.ttl_ms)
                self.fences[name] += 1
                fences.append(self.fences[name])
                self.tombstones.add((name, token))
            if to.waiter:
                self._take_place(to.waiter, to.place)
            return HandOver(True, tuple(fences))
        released = 0
        for name in self.names:
            if self._owner(name) == token:
                del self.owners[name]
                released += 1
            elif (name, token) in self.tombstones:
                released += 1
            self.tombstones.add((name, token))
        if not_our_turn:
            assert to is not None
            self._stand_in_line(to.waiter, keep=False)
        return HandOver(released == len(self.names), None)

    def _extend(self, token: str, ttl_ms: int) -> bool:
        if any(self._owner(name) != token for name in self.names):
            return False
        for name in self.names:
            self._set(name, token, ttl_ms)
        return True

    def _leave_line(self, waiter: str) -> None:
        if waiter in self.line:
            self.line.remove(waiter)

    # -- the Resource protocol ------------------------------------------------------------

    async def _call(self, call: Call, effect: Callable[[], _T]) -> _T:
        self.calls.append(call)
        self._counts[call.method] += 1
        hook = self._hooks.pop((call.method, self._counts[call.method]), None)
        await asyncio.sleep(0)  # a round trip is at least one turn of the loop
        if hook is not None and not hook.reply_late:
            hook.entered.set()
            await hook.hold()
        call.result = effect()
        call.applied = True
        if hook is not None and hook.reply_late:
            hook.entered.set()
            await hook.hold()
        return call.result

    async def acquire(
        self, client: Any, token: str, ttl_ms: int, waiter: str = "", place: Place = Place.NONE
    ) -> Grant:
        effect = functools.partial(self._acquire, token, ttl_ms, waiter, place)
        return await self._call(Call("acquire", token), effect)

    async def release(self, client: Any, token: str) -> bool:
        reply = await self._call(Call("release", token), functools.partial(self._release, token))
        return reply.released

    async def hand_over(self, client: Any, token: str, to: Successor) -> HandOver:
        effect = functools.partial(self._release, token, to)
        return await self._call(Call("hand_over", token, to), effect)

    async def extend(self, client: Any, token: str, ttl_ms: int) -> bool:
        effect = functools.partial(self._extend, token, ttl_ms)
        return await self._call(Call("extend", token), effect)

    async def leave_line(self, client: Any, waiter: str) -> None:
        await self._call(Call("leave_line", waiter), functools.partial(self._leave_line, waiter))

    async def locked(self, client: Any) -> bool:
        def effect() -> bool:
            return any(self._owner(name) is not None for name in self.names)

        return await self._call(Call("locked", ""), effect)


class FakeNotifier:
    """The notifier as the queue uses it: an id, ``watch`` and ``unwatch``.

    ``watch`` keeps the queue's event, so that :meth:`publish` wakes it as a release
    message would.
    """

    def __init__(self, process_id: str = "process-self") -> None:
        self.id = process_id
        self.events: list[asyncio.Event] = []
        self.watches = 0
        self.unwatches = 0

    async def watch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        self.watches += 1
        if event not in self.events:
            self.events.append(event)

    def unwatch(self, channels: tuple[str, ...], event: asyncio.Event) -> None:
        self.unwatches += 1
        if event in self.events:
            self.events.remove(event)

    def publish(self) -> None:
        """Deliver a release message to every watching queue."""
        for event in self.events:
            event.set()


class FakeClient:
    """The client: only an identity (the process's queues are kept by it, weakly)."""


# -- helpers and fixtures ---------------------------------------------------------------


@pytest.fixture(autouse=True)
async def background_settled() -> AsyncIterator[None]:
    """Each test ends with the lifecycle's background tasks (clean-ups) finished."""
    yield
    assert await background_done(BOUND), "a background task did not finish"


@pytest.fixture
def recheck(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set how often a notified waiter re-checks (``_NOTIFIED_RECHECK``)."""

    def set_recheck(seconds: float) -> None:
        monkeypatch.setattr(_acquire, "_NOTIFIED_RECHECK", seconds)

    return set_recheck


def policy(ttl: float = 10.0) -> LeasePolicy:
    return LeasePolicy.build(ttl)


async def until(condition: Callable[[], object], what: str, limit: float = BOUND) -> None:
    """Wait, polling, until ``condition()`` is true; fail after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def entered(hook: Hook) -> None:
    async with asyncio.timeout(BOUND):
        await hook.entered.wait()


async def head_offer(client: FakeClient, resource: InMemoryResource) -> Offer:
    """Wait until the head of the process's queue offers to take a hand-over."""
    await until(lambda: _offer_of(client, resource) is not None, "the head offers")
    offer = _offer_of(client, resource)
    assert offer is not None
    return offer


def _offer_of(client: FakeClient, resource: InMemoryResource) -> Offer | None:
    queue = queue_for(client, resource.channels)
    return None if queue is None else queue._offer


def _queue(client: FakeClient, resource: InMemoryResource) -> LocalQueue:
    queue = queue_for(client, resource.channels)
    assert queue is not None
    return queue


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and check that the cancellation propagates out of it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await task


def start(acquisition: Acquisition, wait_limit: float | None = BOUND) -> asyncio.Task[Any]:
    return asyncio.ensure_future(acquisition.run(wait_limit))


# -- Place -------------------------------------------------------------------------------


def test_places_are_the_strings_the_scripts_compare() -> None:
    """The scripts receive a place as ``ARGV`` and compare it with these strings."""
    assert Place.NONE == ""
    assert Place.LEAVE == "leave"
    assert Place.BACK == "back"
    assert [str(place) for place in Place] == ["", "leave", "back"]


# -- the in-memory resource itself -------------------------------------------------------


async def test_the_in_memory_resource_keeps_the_rules_of_the_scripts() -> None:
    """The fake's rules are those the client relies on: if they drift, the tests lie."""
    resource, client = InMemoryResource(), FakeClient()
    first = await resource.acquire(client, "one", 2000)
    assert first == Grant(True, (1,))
    assert await resource.acquire(client, "one", 2000) == first  # same token: same fence
    refused = await resource.acquire(client, "two", 2000, "p2")
    assert not refused.acquired
    assert refused.retry_after is not None
    assert 1.5 < refused.retry_after <= 2.0
    assert resource.line == ["p2"]
    assert await resource.release(client, "one")
    assert await resource.release(client, "one")  # the same release again still counts
    assert not (await resource.acquire(client, "one", 2000)).acquired  # released: refused
    assert not await resource.release(client, "three")  # never held: not released ...
    assert not (await resource.acquire(client, "three", 2000)).acquired  # ... yet tombstoned
    assert (await resource.acquire(client, "four", 2000)).fencing_tokens == (2,)
    to_released = Successor("three", 2000, "p1", Place.NONE, jump_line=True)
    assert await resource.hand_over(client, "four", to_released) == HandOver(True, None)
    assert resource.holder() is None


# -- 1. a reply after the lease's deadline -----------------------------------------------
# Protects: a lease whose grant arrives after its deadline on our clock may already be
# someone else's; it is released by its token and the call goes on under a new token.


async def test_a_late_reply_is_released_and_the_lock_taken_under_a_new_token() -> None:
    resource, client = InMemoryResource(expire=False), FakeClient()
    resource.hook("acquire", delay=0.08, reply_late=True)
    acquisition = Acquisition(
        resource, client, policy(0.05), LinearBackoff(0.01, jitter=0), notifier=None
    )
    old = acquisition.token
    lease = await acquisition.run(BOUND)
    assert isinstance(lease, Lease)
    assert [call.method for call in resource.calls] == ["acquire", "release", "acquire"]
    assert resource.tokens("release") == [old]
    assert resource.made("release")[0].result.released  # it took the late grant back
    new = resource.tokens("acquire")[1]
    assert new != old
    assert lease.token == acquisition.token == new
    assert lease.fencing_tokens == {"a": 2}
    assert resource.holder() == new
    assert not acquisition.may_hold


async def test_a_hand_over_granted_too_late_is_released_and_retaken_under_a_new_token() -> None:
    resource, client, notifier = InMemoryResource(expire=False), FakeClient(), FakeNotifier()
    resource.hold("holder")
    acquisition = Acquisition(resource, client, policy(0.05), None, notifier)
    old = acquisition.token
    task = start(acquisition)
    offer = await head_offer(client, resource)
    assert offer.token == old
    # The hand-over reaches the store at once, its reply only after the head's deadline.
    resource.hook("hand_over", delay=0.08, reply_late=True)
    assert await _queue(client, resource).release(resource, client, "holder", BOUND)
    assert offer.granted is not None
    assert time.monotonic() - offer.granted[0] > 0.05
    lease = await asyncio.wait_for(task, BOUND)
    assert isinstance(lease, Lease)
    methods = [call.method for call in resource.calls if call.method != "leave_line"]
    assert methods == ["acquire", "locked", "hand_over", "release", "acquire"]
    assert resource.made("hand_over")[0].successor.token == old
    assert resource.tokens("release") == [old]
    assert resource.made("release")[0].result.released  # the late hand-over, given back
    new = resource.tokens("acquire")[1]
    assert new != old
    assert lease.token == acquisition.token == new
    assert resource.holder() == new
    assert not acquisition.handed_over


# -- 2. a hand-over claimed, then abandoned -----------------------------------------------
# Protects: from the moment a release of this process claims the head's offer, the lock
# may be held under the head's token without the head hearing of it; a head that gives
# up then releases by its token, and the release's tombstone refuses a hand-over that
# arrives later. Nothing stays held.


async def _claimed_offer(
    resource: InMemoryResource, client: FakeClient, acquisition: Acquisition
) -> tuple[asyncio.Task[Any], asyncio.Task[bool], asyncio.Event]:
    """Start ``acquisition`` and a release whose hand-over to it is held in flight."""
    resource.hold("holder", ttl=30)
    task = start(acquisition)
    offer = await head_offer(client, resource)
    go = asyncio.Event()
    hook = resource.hook("hand_over", block=go)
    releaser = asyncio.ensure_future(
        _queue(client, resource).release(resource, client, "holder", BOUND)
    )
    await entered(hook)
    assert offer.claimed
    return task, releaser, go


async def test_a_head_cancelled_after_its_offer_was_claimed_releases_by_its_token() -> None:
    resource, client = InMemoryResource(), FakeClient()
    acquisition = Acquisition(resource, client, policy(), None, FakeNotifier())
    task, releaser, go = await _claimed_offer(resource, client, acquisition)
    await cancelled(task)
    assert acquisition.maybe_handed
    assert acquisition.may_hold
    # Released before the cancellation surfaced, not left to the background.
    assert resource.tokens("release") == [acquisition.token]
    assert resource.made("release")[0].applied
    go.set()  # the hand-over reaches the store after the head gave up
    assert await asyncio.wait_for(releaser, BOUND)
    assert resource.made("hand_over")[0].result == HandOver(True, None)  # refused
    assert resource.holder() is None


async def test_a_head_whose_wait_runs_out_after_its_offer_was_claimed_releases_by_its_token(
    recheck: Callable[[float], None],
) -> None:
    recheck(1.0)  # the wait limit, not a re-check, ends the wait for the hand-over
    resource, client = InMemoryResource(), FakeClient()
    acquisition = Acquisition(resource, client, policy(), None, FakeNotifier())
    resource.hold("holder", ttl=30)
    began = time.monotonic()
    task = asyncio.ensure_future(acquisition.run(0.2))
    await head_offer(client, resource)
    go = asyncio.Event()
    hook = resource.hook("hand_over", block=go)
    releaser = asyncio.ensure_future(
        _queue(client, resource).release(resource, client, "holder", BOUND)
    )
    await entered(hook)
    assert await asyncio.wait_for(task, BOUND) is None
    assert 0.15 < time.monotonic() - began < 1.0
    assert acquisition.maybe_handed
    assert acquisition.may_hold
    # In the background, so that the caller has its answer when its timeout says.
    await until(lambda: resource.tokens("release") == [acquisition.token], "the clean-up")
    await until(lambda: resource.made("release")[0].applied, "the clean-up applies")
    go.set()
    assert await asyncio.wait_for(releaser, BOUND)
    assert resource.made("hand_over")[0].result == HandOver(True, None)  # refused
    assert resource.holder() is None


async def test_a_head_whose_strategy_gives_up_after_its_offer_was_claimed_releases_by_its_token(
    recheck: Callable[[float], None],
) -> None:
    recheck(1.0)
    resource, client = InMemoryResource(), FakeClient()
    retry = LimitRetries(LinearBackoff(0.1, jitter=0), 1)
    acquisition = Acquisition(resource, client, policy(), retry, FakeNotifier())
    task, releaser, go = await _claimed_offer(resource, client, acquisition)
    # The pause ends, the one retry is refused (the hand-over has not landed): it gives up.
    assert await asyncio.wait_for(task, BOUND) is None
    assert acquisition.maybe_handed
    go.set()
    assert await asyncio.wait_for(releaser, BOUND)
    await asyncio.sleep(0.1)  # time enough for a clean-up in the background
    assert resource.tokens("release") == [acquisition.token]
    assert resource.holder() is None  # not held under the token it gave up


# -- 3. a cancellation at each await --------------------------------------------------------
# Protects: whatever await a cancellation lands on, it propagates, a command that may have
# taken the lock is released by token first, and a call with nothing in flight sends no
# release at all.


@pytest.mark.parametrize("notified", [False, True], ids=["polling", "notified"])
@pytest.mark.parametrize("reply_late", [False, True], ids=["command-held", "reply-held"])
async def test_a_cancellation_during_the_first_try_releases_by_token(
    notified: bool, reply_late: bool
) -> None:
    resource, client = InMemoryResource(expire=False), FakeClient()
    hook = resource.hook("acquire", block=asyncio.Event(), reply_late=reply_late)
    notifier = FakeNotifier() if notified else None
    acquisition = Acquisition(resource, client, policy(), None, notifier)
    task = start(acquisition)
    await entered(hook)
    assert acquisition.in_flight
    assert acquisition.may_hold
    await cancelled(task)
    assert resource.tokens("acquire") == [acquisition.token]
    # Synchronously: the release has landed by the time the cancellation surfaced.
    assert resource.tokens("release") == [acquisition.token]
    assert resource.made("release")[0].applied
    assert resource.made("acquire")[0].applied is reply_late
    assert resource.holder() is None
    assert ("a", acquisition.token) in resource.tombstones  # a late command is refused


async def test_a_cancellation_while_waiting_for_a_release_sends_no_release() -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    acquisition = Acquisition(resource, client, policy(), None, notifier)
    task = start(acquisition)
    offer = await head_offer(client, resource)
    assert not acquisition.may_hold
    await cancelled(task)
    assert not offer.claimed
    assert not acquisition.may_hold
    await until(lambda: any(c.applied for c in resource.made("leave_line")), "the line is left")
    assert [call.method for call in resource.calls] == ["acquire", "locked", "leave_line"]
    assert resource.tokens("leave_line") == [notifier.id]  # its place in line is given up
    assert resource.line == []
    assert resource.holder() == "holder"
    assert notifier.unwatches == 1


async def test_a_cancellation_during_the_read_after_subscribing_sends_no_release() -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    hook = resource.hook("locked", block=asyncio.Event())
    acquisition = Acquisition(resource, client, policy(), None, notifier)
    task = start(acquisition)
    await entered(hook)
    assert notifier.watches == 1  # subscribed before the read
    assert not acquisition.may_hold
    await cancelled(task)
    assert "release" not in [call.method for call in resource.calls]
    assert resource.holder() == "holder"


async def test_a_cancellation_during_a_recheck_try_releases_by_token(
    recheck: Callable[[float], None],
) -> None:
    recheck(0.05)
    resource, client, notifier = InMemoryResource(expire=False), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    # A pause of 5 s: the second try, 0.05 s in, is a re-check inside it.
    hook = resource.hook("acquire", nth=2, block=asyncio.Event(), reply_late=True)
    acquisition = Acquisition(resource, client, policy(), LinearBackoff(5.0, jitter=0), notifier)
    began = time.monotonic()
    task = start(acquisition)
    await entered(hook)
    assert time.monotonic() - began < 1.0
    assert acquisition.in_flight
    await cancelled(task)
    assert resource.tokens("acquire") == [acquisition.token] * 2
    assert resource.tokens("release") == [acquisition.token]
    assert resource.made("release")[0].applied
    assert resource.holder() == "holder"


async def test_a_cancellation_during_the_release_of_a_late_reply_releases_by_token() -> None:
    resource, client = InMemoryResource(expire=False), FakeClient()
    resource.hook("acquire", delay=0.08, reply_late=True)
    hook = resource.hook("release", block=asyncio.Event())
    acquisition = Acquisition(resource, client, policy(0.05), None, notifier=None)
    old = acquisition.token
    task = start(acquisition)
    await entered(hook)
    assert acquisition.in_flight
    assert acquisition.token == old
    await cancelled(task)
    # The cut-off release is sent again, to its end; no try under a new token.
    assert [call.method for call in resource.calls] == ["acquire", "release", "release"]
    assert resource.tokens("release") == [old, old]
    assert not resource.made("release")[0].applied
    assert resource.made("release")[1].applied
    assert resource.holder() is None


async def test_a_wait_that_runs_out_during_a_try_releases_by_token_in_the_background() -> None:
    resource, client = InMemoryResource(expire=False), FakeClient()
    hook = resource.hook("acquire", block=asyncio.Event(), reply_late=True)
    acquisition = Acquisition(resource, client, policy(), None, notifier=None)
    assert await asyncio.wait_for(acquisition.run(0.05), BOUND) is None
    assert hook.entered.is_set()
    await until(lambda: resource.made("release"), "the clean-up")
    await until(lambda: resource.made("release")[0].applied, "the clean-up applies")
    assert resource.tokens("release") == [acquisition.token]
    assert resource.holder() is None


# -- 4. the retry strategy while notified --------------------------------------------------
# Protects the meaning of a strategy when releases are notified: each retry takes one of
# its pauses, which a release notification cuts short; the fallback re-checks inside a
# pause are not retries; without a strategy a notified waiter re-checks forever; no pause
# outlasts the holder's remaining TTL.


@pytest.mark.parametrize("every", [10.0, 0.05], ids=["no-recheck", "rechecks"])
async def test_one_retry_comes_after_its_pause_and_rechecks_do_not_count(
    recheck: Callable[[float], None], every: float
) -> None:
    recheck(every)
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    retry = LimitRetries(LinearBackoff(1.0, jitter=0), 1)
    acquisition = Acquisition(resource, client, policy(), retry, notifier)
    began = time.monotonic()
    assert await asyncio.wait_for(acquisition.run(None), BOUND) is None
    took = time.monotonic() - began
    assert 0.95 <= took < 1.6
    tries = resource.made("acquire")
    assert tries[-1].at - tries[0].at >= 0.95  # the retry, after the whole pause
    if every > 1.0:
        assert len(tries) == 2
    else:
        assert len(tries) >= 10  # re-checks every 0.05 s, none of them a retry


@pytest.mark.parametrize("released", [True, False], ids=["free", "taken-again"])
async def test_a_release_notification_ends_the_pause_and_takes_the_retry(
    recheck: Callable[[float], None], released: bool
) -> None:
    recheck(10.0)
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    retry = LimitRetries(LinearBackoff(1.0, jitter=0), 1)
    acquisition = Acquisition(resource, client, policy(), retry, notifier)
    began = time.monotonic()
    task = start(acquisition, None)
    await head_offer(client, resource)
    if released:
        await resource.release(client, "holder")
    notifier.publish()
    result = await asyncio.wait_for(task, BOUND)
    assert time.monotonic() - began < 0.5
    assert len(resource.made("acquire")) == 2
    if released:
        assert isinstance(result, Lease)
        assert resource.holder() == acquisition.token
    else:
        assert result is None  # the one retry is spent: it gives up at once


async def test_without_a_strategy_a_notified_waiter_rechecks_and_never_gives_up(
    recheck: Callable[[float], None],
) -> None:
    recheck(0.05)
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    acquisition = Acquisition(resource, client, policy(), None, notifier)
    began = time.monotonic()
    assert await asyncio.wait_for(acquisition.run(0.6), BOUND) is None
    assert time.monotonic() - began >= 0.55  # the wait limit ended it, not the waiter
    times = [call.at for call in resource.made("acquire")]
    assert len(times) >= 6
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < 0.2


@pytest.mark.parametrize("notified", [False, True], ids=["polling", "notified"])
async def test_a_pause_ends_when_the_holders_lease_runs_out(
    recheck: Callable[[float], None], notified: bool
) -> None:
    recheck(10.0)
    resource, client = InMemoryResource(), FakeClient()
    resource.hold("holder", ttl=0.3)
    notifier = FakeNotifier() if notified else None
    # Pauses of 5 s; a retry or two spare for a timer that fires a hair early.
    retry = LimitRetries(LinearBackoff(5.0, jitter=0), 3)
    acquisition = Acquisition(resource, client, policy(), retry, notifier)
    began = time.monotonic()
    lease = await asyncio.wait_for(acquisition.run(None), BOUND)
    assert isinstance(lease, Lease)
    assert 0.25 <= time.monotonic() - began < 0.8
    assert resource.holder() == acquisition.token


# -- 5. the queue's side of a release ------------------------------------------------------
# Protects the hand-over protocol between a releasing coroutine and the head of its
# process's queue (the diagram in _queue.py): who is woken, what the script is told, and
# what the queue then knows of its place in the lock's line.


async def _offering(queue: LocalQueue, timeout: float = BOUND) -> tuple[Offer, asyncio.Task[Any]]:
    """A head waiting on ``queue`` with an offer to take a hand-over."""
    offer = Offer(f"head-{next(_HEADS)}", 7000)
    head = asyncio.ensure_future(queue.wait_for_release(offer, timeout))
    await until(lambda: queue._offer is offer, "the offer is up")
    return offer, head


_HEADS = itertools.count()


@contextlib.asynccontextmanager
async def _queued(
    client: FakeClient, notifier: FakeNotifier, resource: InMemoryResource
) -> AsyncIterator[LocalQueue]:
    """A place in the process's queue, held as its head (as an acquisition does)."""
    queue = join_queue(client, notifier, resource)  # type: ignore[arg-type]
    try:
        async with queue.turn:
            yield queue
    finally:
        queue.leave()


async def _wait_turn(
    client: FakeClient, notifier: FakeNotifier, resource: InMemoryResource
) -> None:
    """Another coroutine of the process: queues, and leaves once it is the head."""
    async with _queued(client, notifier, resource):
        pass


async def test_a_release_without_an_offer_is_plain_and_wakes_the_queue() -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    async with _queued(client, notifier, resource) as queue:
        assert await queue.release(resource, client, "holder", BOUND)
        assert queue.event.is_set()
    assert [call.method for call in resource.calls] == ["release"]
    assert resource.holder() is None


@pytest.mark.parametrize(
    ("situation", "place", "in_line_after"),
    [("alone", Place.NONE, False), ("in-line", Place.LEAVE, False), ("more", Place.BACK, True)],
    ids=["alone", "in-line", "more-waiting"],
)
async def test_an_unclaimed_offer_is_handed_over_on_the_heads_terms(
    situation: str, place: Place, in_line_after: bool
) -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    async with _queued(client, notifier, resource) as queue:
        others = []
        if situation == "more":  # another coroutine of the process waits for its turn
            others.append(asyncio.ensure_future(_wait_turn(client, notifier, resource)))
            await until(lambda: queue.users == 2, "a second waiter queues")
        queue.in_line = situation == "in-line"
        offer, head = await _offering(queue)
        assert await queue.release(resource, client, "holder", BOUND)
        assert [call.method for call in resource.calls] == ["hand_over"]
        successor = resource.made("hand_over")[0].successor
        assert successor == Successor(offer.token, 7000, notifier.id, place, jump_line=True)
        assert offer.claimed
        assert offer.granted is not None
        assert offer.granted[1] == (2,)
        assert queue.event.is_set()
        assert queue.in_line is in_line_after
        await asyncio.wait_for(head, BOUND)
        assert queue._offer is None  # withdrawn
        assert resource.holder() == offer.token
    await asyncio.wait_for(asyncio.gather(*others), BOUND)


async def _hand_overs(
    queue: LocalQueue, resource: InMemoryResource, client: FakeClient, count: int
) -> list[tuple[Offer, Successor]]:
    """``count`` releases in a row, each handing over to the next head (if allowed)."""
    done = []
    for _ in range(count):
        holder = resource.holder()
        assert holder is not None
        queue.event.clear()
        offer, head = await _offering(queue, timeout=0.05)
        await queue.release(resource, client, holder, BOUND)
        await asyncio.wait_for(head, BOUND)
        successor = resource.calls[-1].successor
        assert successor is not None
        done.append((offer, successor))
    return done


async def test_after_a_local_run_of_hand_overs_the_line_is_not_jumped() -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    async with _queued(client, notifier, resource) as queue:
        done = await _hand_overs(queue, resource, client, LOCAL_RUN + 1)
    assert [successor.jump_line for _, successor in done] == [True] * LOCAL_RUN + [False]
    # Nobody else waits: each was handed over, the last one too.
    assert all(offer.granted is not None for offer, _ in done)
    assert resource.holder() == done[-1][0].token


async def test_a_hand_over_refused_for_another_process_waits_in_line_unwoken() -> None:
    resource, client, notifier = InMemoryResource(), FakeClient(), FakeNotifier()
    resource.hold("holder", ttl=30)
    resource.line.append("process-other")  # another process waits longer
    async with _queued(client, notifier, resource) as queue:
        await _hand_overs(queue, resource, client, LOCAL_RUN)  # a run jumps the line
        assert not queue.in_line
        queue.event.clear()
        offer, head = await _offering(queue, timeout=0.05)
        assert await queue.release(resource, client, resource.holder() or "", BOUND)
        assert resource.calls[-1].successor.jump_line is False
        assert resource.calls[-1].result == HandOver(True, None)
        assert offer.claimed
        assert offer.granted is None
        assert queue.in_line  # the script put the process in line, behind the other
        assert resource.line == ["process-other", notifier.id]
        assert not queue.event.is_set()  # the head is not woken to race the other
        assert resource.holder() is None
        await asyncio.wait_for(head, BOUND)  # its own wait runs out
        # The run starts again: the next hand-over may jump the line.
        resource.hold("again", ttl=30)
        [(_, successor)] = await _hand_overs(queue, resource, client, 1)
        assert successor.jump_line


# -- a cancellation swallowed below ---------------------------------------------------------
# A client library may catch a cancellation and return normally (the task still counts the
# request): the acquisition must end cancelled all the same, not wait on until its timeout.


@pytest.mark.parametrize("method", ["acquire", "locked"])
async def test_a_cancellation_swallowed_by_a_call_still_ends_the_acquire(method: str) -> None:
    resource, client = InMemoryResource(), FakeClient()
    resource.hold("holder", ttl=30)
    nth = 2 if method == "acquire" else 1  # the re-check try, or the read after subscribing
    hook = resource.hook(method, nth, block=asyncio.Event(), swallow_cancel=True)
    acquisition = Acquisition(resource, client, policy(), None, FakeNotifier())
    if method == "acquire":
        resource.hold("holder", ttl=0.3)  # free by the re-check: the swallowed try wins
    task = asyncio.ensure_future(acquisition.run(None))
    await asyncio.wait_for(hook.entered.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    if method == "acquire":
        # The try went through under the swallowed cancel: released by its token.
        assert resource.tokens("release") == [acquisition.token]
    assert resource.holder() in (None, "holder")


# -- a wake-up left behind by an earlier head -------------------------------------------------


async def test_a_wake_up_left_by_an_earlier_head_does_not_cut_the_next_heads_pause() -> None:
    resource, client, notifier = InMemoryResource(expire=False), FakeClient(), FakeNotifier()
    resource.hold("other")
    first = Acquisition(resource, client, policy(), None, notifier)
    one_slow_retry = LimitRetries(LinearBackoff(1.0, jitter=0), 1)
    second = Acquisition(resource, client, policy(), one_slow_retry, notifier)
    hook = resource.hook("acquire", 2, delay=1.0)  # the first head's re-check outlasts it
    first_run = asyncio.ensure_future(first.run(0.35))
    await asyncio.sleep(0.01)
    second_run = asyncio.ensure_future(second.run(None))
    await asyncio.wait_for(hook.entered.wait(), BOUND)
    notifier.publish()  # a release message; the lock is taken again at once
    assert await asyncio.wait_for(first_run, BOUND) is None  # its wait limit passed
    became_head = time.monotonic()
    assert await asyncio.wait_for(second_run, BOUND) is None
    # The second head takes its strategy's pause before its one retry: the stale
    # wake-up of the first head must not end that pause at once.
    assert time.monotonic() - became_head > 0.8
