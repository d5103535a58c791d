"""Lifecycle events: what happened to a lock or a decorated task, for logs and metrics.

Every event has a stable name (``LockEvent.event``) and structured fields. It goes to
the subscribers added with :func:`subscribe`, and to the standard logger
``asynclock`` with the fields of :meth:`LockEvent.fields` in ``extra`` (so a record
has ``record.event``, ``record.lock``, ``record.key``, ``record.token``,
``record.fencing_token``, ``record.duration``, ``record.error``, ``record.task`` and
the others of :class:`LockEvent`), and ``record.lock_event`` holds the event itself:

=====================  ==========  =====================================================
event                  level       when
=====================  ==========  =====================================================
``lock_requested``     DEBUG       an acquire began (it may wait)
``lock_acquired``      DEBUG       a lease was acquired (``waited``, ``handed_over``)
``lock_not_acquired``  DEBUG       an acquire ended without the lock: its ``outcome`` is
                                   ``skipped`` (held, and it did not wait), ``timeout``
                                   (its wait or its retries ran out), ``cancelled``
                                   or ``error`` (the ``LockBackendError`` it raised)
``lock_extended``      DEBUG       the watchdog (or ``extend()``) extended a lease
``lock_extend_failed`` WARNING     an extension failed (it is retried until the deadline)
``lock_lost``          ERROR       a lease was lost while held
``lock_released``      DEBUG       a lease was released
``task_started``       INFO        a decorated call got its lock and started
``task_succeeded``     INFO        a decorated call returned
``task_failed``        ERROR       a decorated call raised (``LockLost`` included)
``task_cancelled``     INFO        a decorated call was cancelled (not a failure)
``task_skipped``       INFO        a decorated call was skipped: the lock was held
``task_finished``      INFO        a decorated call ended, whatever the outcome
``leader_elected``     INFO        an ``Election`` chose this replica (``fencing_token``
                                   is the term)
``leader_resigned``    INFO        this replica's term ended: it stepped down
``leader_deposed``     WARNING     this replica's term was lost (its lease)
``backend_fallback``   WARNING     ``connect(url, fallback="memory")`` found the store
                                   unreachable and uses memory instead (``lock`` and
                                   ``key``: the URL, without credentials)
=====================  ==========  =====================================================

:func:`set_verbosity` chooses what reaches the logger: ``"default"`` (task events and
anomalies: ``lock_extend_failed``, ``lock_lost``), ``"verbose"`` (every event) or
``"off"``. Subscribers receive every event whatever the verbosity. When there is no
subscriber and the logger would drop the record, emitting costs one check and builds
nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["LockEvent", "set_verbosity", "subscribe"]

_log = logging.getLogger("asynclock")

Verbosity = Literal["default", "verbose", "off"]

#: The level each event is logged at.
LEVELS: Final[dict[str, int]] = {
    "lock_requested": logging.DEBUG,
    "lock_acquired": logging.DEBUG,
    "lock_not_acquired": logging.DEBUG,
    "lock_extended": logging.DEBUG,
    "lock_extend_failed": logging.WARNING,
    "lock_lost": logging.ERROR,
    "lock_released": logging.DEBUG,
    "task_started": logging.INFO,
    "task_succeeded": logging.INFO,
    "task_failed": logging.ERROR,
    "task_cancelled": logging.INFO,
    "task_skipped": logging.INFO,
    "task_finished": logging.INFO,
    "leader_elected": logging.INFO,
    "leader_resigned": logging.INFO,
    "leader_deposed": logging.WARNING,
    "backend_fallback": logging.WARNING,
}

# What a logged event adds to its message, when its name alone would not say enough.
_NOTES: Final[dict[str, str]] = {
    "backend_fallback": "in-process memory locks used instead, excluding nothing across processes",
}
_DEFAULT_EVENTS: Final = frozenset(
    name
    for name in LEVELS
    if name.startswith(("task_", "leader_")) or LEVELS[name] >= logging.WARNING
)


@dataclass(frozen=True, slots=True)
class LockEvent:
    """One lifecycle event.

    :ivar event: the event's stable name, such as ``"lock_lost"``
    :ivar lock: the lock's name (names joined with ``", "``)
    :ivar key: the main Redis key of the lock
    :ivar token: the lease's owner token, if there is a lease
    :ivar fencing_token: the lease's fencing token, if there is a lease
    :ivar duration: seconds the lease was held, or the task ran, or was waited for
    :ivar error: the exception of a failure, a loss or a failed extension
    :ivar task: the decorated function's qualified name, for ``task_*`` events
    :ivar at: when it happened, on ``time.time()``
    :ivar primitive: ``"mutex"``, ``"multilock"``, ``"semaphore"`` or ``"election"``
        (``"backend"`` for ``backend_fallback``)
    :ivar template: the ``@locked`` name template the lock's name was made from (such
        as ``"report:{user_id}"``), for events of decorated calls: a label of bounded
        cardinality for metrics
    :ivar waited: for the end of an acquire, seconds from asking to holding or giving up
    :ivar outcome: for the end of an acquire, ``"acquired"``, ``"skipped"``,
        ``"timeout"``, ``"cancelled"`` or ``"error"``
    :ivar handed_over: for ``lock_acquired``, whether the lock came straight from a
        release in this process (one script call, no wake-up)
    """

    event: str
    lock: str
    key: str
    token: str | None = None
    fencing_token: int | None = None
    duration: float | None = None
    error: BaseException | None = None
    task: str | None = None
    at: float = 0.0
    primitive: str = ""
    template: str | None = None
    waited: float | None = None
    outcome: str | None = None
    handed_over: bool = False

    def fields(self) -> dict[str, object]:
        """The event as a flat dict, for logging ``extra`` and metrics labels."""
        return {
            "event": self.event,
            "lock": self.lock,
            "key": self.key,
            "token": self.token,
            "fencing_token": self.fencing_token,
            "duration": self.duration,
            "error": None if self.error is None else repr(self.error),
            "task": self.task,
            "primitive": self.primitive,
            "template": self.template,
            "waited": self.waited,
            "outcome": self.outcome,
            "handed_over": self.handed_over,
        }


Subscriber = Callable[[LockEvent], None]

_subscribers: list[Subscriber] = []
_logged: frozenset[str] = _DEFAULT_EVENTS


def subscribe(callback: Subscriber) -> Callable[[], None]:
    """Call ``callback`` with every event from now on; return a function that stops it.

    Callbacks run synchronously where the event happens: keep them short (count,
    enqueue). An exception in a callback is logged and does not disturb the lock.
    """
    if not callable(callback):
        raise TypeError("a subscriber must be callable with a LockEvent")
    _subscribers.append(callback)

    def unsubscribe() -> None:
        if callback in _subscribers:
            _subscribers.remove(callback)

    return unsubscribe


def set_verbosity(verbosity: Verbosity) -> None:
    """Choose which events reach the ``asynclock`` logger.

    ``"default"``: task events and anomalies; ``"verbose"``: every event; ``"off"``:
    none (subscribers still receive everything).
    """
    global _logged
    if verbosity == "default":
        _logged = _DEFAULT_EVENTS
    elif verbosity == "verbose":
        _logged = frozenset(LEVELS)
    elif verbosity == "off":
        _logged = frozenset()
    else:
        raise ValueError(f"verbosity must be 'default', 'verbose' or 'off', not {verbosity!r}")


def listening(event: str) -> bool:
    """Whether anyone would receive ``event``: check before building one."""
    return bool(_subscribers) or (event in _logged and _log.isEnabledFor(LEVELS[event]))


def emit(event: LockEvent) -> None:
    """Deliver ``event`` to the subscribers and, if its verbosity allows, the logger."""
    for callback in tuple(_subscribers):
        try:
            callback(event)
        except Exception:
            _log.exception("an asynclock event subscriber raised")
    if event.event in _logged:
        level = LEVELS[event.event]
        if _log.isEnabledFor(level):
            message = f"{event.event} {event.lock!r}"
            if event.event in _NOTES:
                message += f" ({_NOTES[event.event]})"
            if event.error is not None:
                message += f": {event.error!r}"
            _log.log(level, message, extra={"lock_event": event, **event.fields()})


def now() -> float:
    """The wall-clock time stamped on events."""
    return time.time()
