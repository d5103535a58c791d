"""Timing of a lease: its deadline on the client's clock, extension pauses, the policy.

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

Decisions only, no I/O: everything here is tested without a server.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from ._errors import LockLost
from ._scripts import ReplicaWait
from ._validate import MAX_KEEP, MIN_TTL, check_optional_seconds, check_seconds

#: The most replicas a lock may ask to acknowledge its writes.
MAX_REPLICAS: Final = 64

#: A hook called with the ``LockLost`` error when a lease is lost; it may be async.
OnLost = Callable[[LockLost], Awaitable[None] | None]

# The longest a release or a clean-up may take before it is given up (the lease then
# expires on its own), and the shortest it is given. Bounded so that a dead server
# cannot hold an ``async with`` exit for long.
RELEASE_TIMEOUT_CAP: Final = 2.0
RELEASE_TIMEOUT_FLOOR: Final = 0.1


def bounded_release_timeout(left: float) -> float:
    """Return how long a release may take when the server holds the key ``left`` more s."""
    return min(max(left, RELEASE_TIMEOUT_FLOOR), RELEASE_TIMEOUT_CAP)


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
    :ivar replica_wait: the replicas that must acknowledge each acquire and extension,
        and how long to wait for them, or ``None`` (no waiting)
    :ivar ttl_ms: the TTL in whole milliseconds, rounded up so the server never holds
        less (computed once: every acquire sends it)
    """

    ttl: float
    extend_interval: float
    auto_extend: bool
    max_hold: float | None
    on_lost: OnLost | None
    hold_at_least: float | None = None
    replica_wait: ReplicaWait | None = None
    ttl_ms: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ttl_ms", math.ceil(self.ttl * 1000))

    @classmethod
    def build(
        cls,
        ttl: object,
        extend_interval: object = None,
        auto_extend: object = True,
        max_hold: object = None,
        on_lost: object = None,
        hold_at_least: object = None,
        replicas: object = 0,
        replica_timeout: object = 1.0,
    ) -> LeasePolicy:
        """Validate the arguments and return the policy they describe.

        Policies without an ``on_lost`` hook are kept by their arguments (and their
        types: ``30`` is no ``30.0``, nor ``True`` a ``1``), since a service builds a
        lock, and so a policy, per request; a hook is not kept alive by a cache.
        """
        key: tuple[object, ...] | None = None
        if on_lost is None:
            key = (cls, type(ttl), ttl, type(extend_interval), extend_interval,
                   type(auto_extend), auto_extend, type(max_hold), max_hold,
                   type(hold_at_least), hold_at_least, type(replicas), replicas,
                   type(replica_timeout), replica_timeout)  # fmt: skip
            try:
                known = _POLICIES.get(key)
            except Exception:  # an unhashable argument (or a broken hash): checked below
                known = key = None
            if known is not None:
                return known
        policy = cls._validated(ttl, extend_interval, auto_extend, max_hold, on_lost,
                                hold_at_least, replicas, replica_timeout)  # fmt: skip
        if key is not None:
            if len(_POLICIES) >= _POLICIES_KEPT:
                _POLICIES.clear()
            _POLICIES[key] = policy
        return policy

    @classmethod
    def _validated(
        cls,
        ttl: object,
        extend_interval: object,
        auto_extend: object,
        max_hold: object,
        on_lost: object,
        hold_at_least: object,
        replicas: object,
        replica_timeout: object,
    ) -> LeasePolicy:
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
            replica_wait=_replica_wait(replicas, replica_timeout, interval),
        )


# The policies built so far, by their arguments (see LeasePolicy.build): a few per
# application, so the bound is only a guard against one built from ever new values.
_POLICIES: dict[tuple[object, ...], LeasePolicy] = {}
_POLICIES_KEPT: Final = 256


def _replica_wait(replicas: object, timeout: object, extend_interval: float) -> ReplicaWait | None:
    """The replica acknowledgement asked for, checked; ``None`` for none."""
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise TypeError(f"replicas must be an int, not {type(replicas).__name__}")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be from 0 to {MAX_REPLICAS}, not {replicas}")
    seconds = check_seconds(timeout, "replica_timeout")
    if not replicas:
        return None
    # Each extension waits for the replicas too: the wait must end before the next
    # extension is due, or extensions would queue behind each other.
    if seconds >= extend_interval:
        raise ValueError(
            f"replica_timeout ({seconds} s) must be shorter than the extension interval"
            f" ({extend_interval:.4g} s, a third of the ttl by default)"
        )
    return ReplicaWait(replicas, max(1, math.ceil(seconds * 1000)))
