"""OpenTelemetry metrics and traces of asynclock's locks: call :func:`instrument` once.

Needs the ``otel`` extra (``pip install 'asynclock[otel]'``, which brings
``opentelemetry-api`` only); an SDK and an exporter are the application's. Built on
the lifecycle events (:func:`asynclock.subscribe`): nothing is recorded until
``instrument()`` is called, and the locks themselves do not change.

Metrics, shaped after OpenTelemetry's database connection-pool conventions (there are
none for locks), each with the attributes ``asynclock.lock.primitive`` and, unless
names are turned off, ``asynclock.lock.name``:

=================================  ==============  ========================================
instrument                         kind, unit      what
=================================  ==============  ========================================
``asynclock.lock.wait_time``       histogram, s    from asking for a lock to holding it or
                                                   giving up; ``asynclock.lock.outcome`` is
                                                   ``acquired``, ``timeout``, ``skipped``,
                                                   ``cancelled`` or ``error``
``asynclock.lock.hold_time``       histogram, s    from acquiring to releasing (or losing)
``asynclock.lock.pending_requests`` up-down         coroutines asking for a lock right now
                                   counter
``asynclock.lock.hand_overs``      counter         acquisitions handed straight over by a
                                                   release in the same process
``asynclock.lock.lost``            counter         leases lost while held
``asynclock.lock.extend_failures`` counter         extensions that failed (then retried)
=================================  ==============  ========================================

Spans, children of the span current where the lock is used (so a lock's wait shows
inside the request's trace, next to redis-py's own spans): ``asynclock acquire`` per
acquire, with its outcome, wait and fencing token; ``asynclock task`` per
``@locked`` call, with the function, its outcome and its duration.

Cardinality stays bounded: the name attribute of a ``@locked`` function's lock is its
name template (``report:{user_id}``), not the formatted name; other locks report their
name, unless ``lock_names=False`` leaves names out entirely.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from ._events import LockEvent, subscribe

__all__ = ["Instrumentation", "instrument"]

_SCOPE = "asynclock"

#: Bucket boundaries of the two histograms, in seconds: lock waits and holds span
#: from a round trip (under a millisecond) to minutes.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip

#: Each ``task_*`` event that ends a decorated call, and the outcome its span reports.
_TASK_OUTCOMES = {
    "task_succeeded": "succeeded",
    "task_failed": "failed",
    "task_cancelled": "cancelled",
    "task_skipped": "skipped",
}


class Instrumentation:
    """Records asynclock's events as OpenTelemetry metrics and spans; see :func:`instrument`."""

    def __init__(
        self, meter_provider: Any = None, tracer_provider: Any = None, *, lock_names: bool = True
    ) -> None:
        from . import __version__

        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        self._lock_names = lock_names
        self._wait_time = meter.create_histogram(
            "asynclock.lock.wait_time", unit="s",
            description="Time from asking for a lock to holding it or giving up",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )  # fmt: skip
        self._hold_time = meter.create_histogram(
            "asynclock.lock.hold_time", unit="s",
            description="Time from acquiring a lock to releasing it",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )  # fmt: skip
        self._pending = meter.create_up_down_counter(
            "asynclock.lock.pending_requests", unit="{request}",
            description="Coroutines asking for a lock right now",
        )  # fmt: skip
        self._hand_overs = meter.create_counter(
            "asynclock.lock.hand_overs", unit="{acquisition}",
            description="Acquisitions handed straight over by a release in the same process",
        )  # fmt: skip
        self._lost = meter.create_counter(
            "asynclock.lock.lost", unit="{lease}", description="Leases lost while held"
        )
        self._extend_failures = meter.create_counter(
            "asynclock.lock.extend_failures", unit="{extension}",
            description="Extensions that failed (each is retried until the lease's deadline)",
        )  # fmt: skip
        # Acquires counted as pending, by their attributes: each is counted down once,
        # by the event that ends it, and an acquire that began before instrument()
        # (never counted up) is not counted down. (Not by token: an acquire whose
        # grant came too late carries on under a new one.)
        self._asking: dict[tuple[tuple[str, str], ...], int] = {}
        self._unsubscribe = subscribe(self._record)

    def uninstrument(self) -> None:
        """Stop recording; what was recorded stays with the providers."""
        self._unsubscribe()
        self._asking.clear()

    def _attributes(self, event: LockEvent) -> dict[str, str]:
        attributes = {"asynclock.lock.primitive": event.primitive}
        if self._lock_names:
            attributes["asynclock.lock.name"] = event.template or event.lock
        return attributes

    def _record(self, event: LockEvent) -> None:
        kind = event.event
        if kind == "lock_requested":
            attributes = self._attributes(event)
            key = tuple(sorted(attributes.items()))
            self._asking[key] = self._asking.get(key, 0) + 1
            self._pending.add(1, attributes)
        elif kind in {"lock_acquired", "lock_not_acquired"}:
            self._end_of_acquire(event)
        elif kind == "lock_released":
            if event.duration is not None:
                self._hold_time.record(event.duration, self._attributes(event))
        elif kind == "lock_lost":
            # A lease ends with a release or a loss, never both: the hold ends here.
            if event.duration is not None:
                self._hold_time.record(event.duration, self._attributes(event))
            self._lost.add(1, self._attributes(event))
        elif kind == "lock_extend_failed":
            self._extend_failures.add(1, self._attributes(event))
        elif kind in _TASK_OUTCOMES:
            self._task_span(event, _TASK_OUTCOMES[kind])

    def _end_of_acquire(self, event: LockEvent) -> None:
        attributes = self._attributes(event)
        key = tuple(sorted(attributes.items()))
        asking = self._asking.get(key, 0)
        if asking:
            if asking == 1:
                del self._asking[key]
            else:
                self._asking[key] = asking - 1
            self._pending.add(-1, attributes)
        outcome = event.outcome or "acquired"
        waited = event.waited or 0.0
        self._wait_time.record(waited, {**attributes, "asynclock.lock.outcome": outcome})
        if event.handed_over:
            self._hand_overs.add(1, attributes)
        # The span is made now, backdated to when the acquire began: the event comes
        # from the acquiring task, so the span current there is its parent.
        span = self._tracer.start_span(
            "asynclock acquire",
            start_time=_nanoseconds(event.at - waited),
            attributes={
                **attributes,
                "asynclock.lock.outcome": outcome,
                "asynclock.lock.wait_time": waited,
                "asynclock.lock.handed_over": event.handed_over,
            },
        )
        if event.fencing_token is not None:
            span.set_attribute("asynclock.lock.fencing_token", event.fencing_token)
        if event.error is not None:
            span.record_exception(event.error)
            span.set_status(Status(StatusCode.ERROR, repr(event.error)))
        span.end(end_time=_nanoseconds(event.at))

    def _task_span(self, event: LockEvent, outcome: str) -> None:
        duration = event.duration or 0.0
        span = self._tracer.start_span(
            "asynclock task",
            start_time=_nanoseconds(event.at - duration),
            attributes={
                **self._attributes(event),
                "asynclock.task": event.task or "",
                "asynclock.task.outcome": outcome,
            },
        )
        if event.error is not None and outcome == "failed":
            span.record_exception(event.error)
            span.set_status(Status(StatusCode.ERROR, repr(event.error)))
        span.end(end_time=_nanoseconds(event.at))


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


_active: Instrumentation | None = None


def instrument(
    meter_provider: Any = None, tracer_provider: Any = None, *, lock_names: bool = True
) -> Instrumentation:
    """Record asynclock's metrics and spans from now on; return the instrumentation.

    :param meter_provider: where the metrics go (default: OpenTelemetry's global one)
    :param tracer_provider: where the spans go (default: the global one)
    :param lock_names: whether metrics and spans carry the lock's name (a ``@locked``
        function's lock gives its name template); ``False`` leaves names out
    :returns: the instrumentation, whose ``uninstrument()`` stops it. Calling
        ``instrument()`` again replaces the previous one.
    """
    global _active
    if not isinstance(lock_names, bool):
        raise TypeError(f"lock_names must be a bool, not {type(lock_names).__name__}")
    if _active is not None:
        _active.uninstrument()
    _active = Instrumentation(meter_provider, tracer_provider, lock_names=lock_names)
    return _active
