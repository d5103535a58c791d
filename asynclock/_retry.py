"""How a blocked acquire waits between tries: small, composable strategy values.

A strategy is anything with a ``delays()`` method returning an iterator of pauses,
in seconds; the acquire loop takes one pause after each failed try and gives up
(``LockNotAcquired``, or ``False`` from ``acquire()``) when the iterator ends. The
waiter's ``timeout`` bounds the wait independently of the strategy.

The lifecycle never sleeps longer than the current holder's remaining TTL, which
every failed try reports: when a lease expires, a waiter tries again at once. While
release notifications work, a pause also ends at the next release; a pause longer
than a quarter second is cut by re-checks that do not count as retries (see
``_acquire.py``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ._validate import check_seconds


class RetryStrategy(Protocol):
    """The shape of a retry strategy: a fresh iterator of pauses per acquire."""

    def delays(self) -> Iterator[float]:
        """Return the pauses, in seconds, to take between tries; end to give up."""
        ...


def _check_jitter(jitter: float) -> None:
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be between 0 and 1, not {jitter!r}")


def _jittered(delay: float, jitter: float) -> float:
    # Subtract up to `jitter` of the delay at random, so that waiters released by the
    # same event do not retry in lock step.
    return delay * (1.0 - jitter * random.random())


@dataclass(frozen=True, slots=True)
class NoRetry:
    """Try once and give up: what ``blocking=False`` does."""

    def delays(self) -> Iterator[float]:
        """Return an empty iterator."""
        return iter(())


@dataclass(frozen=True, slots=True)
class LinearBackoff:
    """Retry every ``delay`` seconds, less up to ``jitter * delay`` at random.

    :ivar delay: the pause between tries, in seconds
    :ivar jitter: the fraction of each pause taken off at random, 0 to 1
    """

    delay: float = 0.05
    jitter: float = 0.5

    def __post_init__(self) -> None:
        check_seconds(self.delay, "delay")
        _check_jitter(self.jitter)

    def delays(self) -> Iterator[float]:
        """Yield ``delay`` (jittered) forever."""
        while True:
            yield _jittered(self.delay, self.jitter)


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Retry after ``initial`` seconds, growing by ``multiplier`` up to ``maximum``.

    The default strategy of a polling waiter: quick first retries for short critical
    sections, then no more than one try per ``maximum`` seconds per waiter.

    :ivar initial: the first pause, in seconds
    :ivar maximum: the longest pause, in seconds
    :ivar multiplier: the growth factor between pauses
    :ivar jitter: the fraction of each pause taken off at random, 0 to 1
    """

    initial: float = 0.005
    maximum: float = 0.1
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        check_seconds(self.initial, "initial")
        check_seconds(self.maximum, "maximum")
        if self.maximum < self.initial:
            raise ValueError("maximum must not be below initial")
        if not self.multiplier >= 1.0:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier!r}")
        _check_jitter(self.jitter)

    def delays(self) -> Iterator[float]:
        """Yield growing, jittered pauses forever."""
        delay = self.initial
        while True:
            yield _jittered(delay, self.jitter)
            delay = min(delay * self.multiplier, self.maximum)


@dataclass(frozen=True, slots=True)
class LimitRetries:
    """Wrap a strategy to give up after ``retries`` retries (``retries + 1`` tries).

    :ivar strategy: the strategy whose pauses are used
    :ivar retries: how many times to retry after the first try
    """

    strategy: RetryStrategy
    retries: int

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise TypeError(f"retries must be an int, not {type(self.retries).__name__}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, not {self.retries!r}")

    def delays(self) -> Iterator[float]:
        """Yield at most ``retries`` pauses of the wrapped strategy."""
        return itertools.islice(self.strategy.delays(), self.retries)


#: The strategy of a polling waiter when none is given (a notified one retries at every
#: release, and every quarter second).
DEFAULT_RETRY = ExponentialBackoff()


def never_gives_up(strategy: RetryStrategy | None) -> bool:
    """Whether waiting with ``strategy`` can only end with the lock (or a timeout).

    ``None`` is the default, which retries for ever; so do the backoffs. A limit, no
    retry, or a strategy of the user's own may end the wait.
    """
    return strategy is None or type(strategy) in (LinearBackoff, ExponentialBackoff)
