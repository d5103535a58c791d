"""``@locked``: run a coroutine function under a lock named from its arguments; and
``@single_flight``: run it once for every concurrent call with the same arguments.

::

    class Reports:
        def __init__(self, redis): self.redis = redis

        @locked("report:{user_id}", client="redis", ttl=60, skip_if_locked=True)
        async def build(self, user_id: int) -> str: ...

Built on the public primitives only: a call enters ``async with Mutex(...)`` (or
``Semaphore`` with ``limit=``), so waiting, auto-extend, loss (the call is cancelled and
``LockLost`` raised) and cancellation safety are theirs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import string
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, ParamSpec, TypeVar, overload

from . import _events
from ._backend import check_client
from ._errors import LockNotAcquired
from ._flight import MAX_OUTCOME, Serializer, SingleFlight, check_flight
from ._lease import Lease
from ._lock import LeaseLock
from ._mutex import Mutex
from ._names import DEFAULT_PREFIX
from ._retry import RetryStrategy
from ._semaphore import Semaphore
from ._timing import LeasePolicy
from ._validate import check_count, check_optional_seconds, check_prefix

P = ParamSpec("P")
R = TypeVar("R")

#: Where a decorated call gets its client: the client itself, the name of an attribute
#: of the call's first argument (``self``), or a callable taking that argument (or
#: nothing) and returning the client.
ClientSource = Any


@overload
def locked(
    name: str | None = None,
    *,
    client: ClientSource,
    skip_if_locked: Literal[False] = False,
    limit: int | None = None,
    ttl: float = 30.0,
    timeout: float | None = None,
    hold_at_least: float | None = None,
    hold_at_most: float | None = None,
    extend_interval: float | None = None,
    retry: RetryStrategy | None = None,
    replicas: int = 0,
    replica_timeout: float = 1.0,
    prefix: str = DEFAULT_PREFIX,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]: ...


@overload
def locked(
    name: str | None = None,
    *,
    client: ClientSource,
    skip_if_locked: Literal[True],
    limit: int | None = None,
    ttl: float = 30.0,
    timeout: float | None = None,
    hold_at_least: float | None = None,
    hold_at_most: float | None = None,
    extend_interval: float | None = None,
    retry: RetryStrategy | None = None,
    replicas: int = 0,
    replica_timeout: float = 1.0,
    prefix: str = DEFAULT_PREFIX,
) -> Callable[
    [Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R | None]]
]: ...


def locked(
    name: str | None = None,
    *,
    client: ClientSource,
    skip_if_locked: bool = False,
    limit: int | None = None,
    ttl: float = 30.0,
    timeout: float | None = None,
    hold_at_least: float | None = None,
    hold_at_most: float | None = None,
    extend_interval: float | None = None,
    retry: RetryStrategy | None = None,
    replicas: int = 0,
    replica_timeout: float = 1.0,
    prefix: str = DEFAULT_PREFIX,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R | None]]]:
    """Decorate a coroutine function (or method) to run under a distributed lock.

    :param name: the lock's name, a template formatted with the call's arguments by
        parameter name, defaults applied (``"report:{user_id}"``,
        ``"sync:{account.id}"``); default: the function's module and qualified name
        (required for a ``functools.partial``, which has none)
    :param client: the ``redis.asyncio`` client; or the name of an attribute of the
        first argument (``"redis"`` for ``self.redis``); or a callable taking the
        first argument (or nothing) and returning the client
    :param skip_if_locked: if another holder has the lock, return ``None`` at once
        (and emit ``task_skipped``) instead of waiting: for scheduled jobs
    :param limit: use a :class:`~asynclock.Semaphore` with this many permits
        instead of a :class:`~asynclock.Mutex`
    :param ttl: the lease's time to live, in seconds (auto-extended while the call runs)
    :param timeout: the longest wait for the lock when not skipping; then
        ``LockNotAcquired``
    :param hold_at_least: keep the lock until this long after the acquire, even if the
        call finished earlier, so that replicas whose schedulers fire a little later
        skip this tick instead of running it again (ShedLock's ``lockAtLeastFor``)
    :param hold_at_most: the longest the lock may be held in all (``max_hold``): a
        wedged call is cancelled with ``LockLost`` after it
    :param extend_interval: seconds between extensions (default ``ttl / 3``)
    :param retry: how a waiting call retries
    :param replicas: replicas that must acknowledge each acquire and extension
        (see :class:`~asynclock.Mutex`)
    :param replica_timeout: how long to wait for them, in seconds
    :param prefix: the key prefix
    :raises TypeError: at decoration, if the function is not a coroutine function or an
        argument has the wrong type
    :raises ValueError: at decoration, if the template names an unknown parameter or
        an argument is out of range

    The wrapped function keeps its name, docstring, signature and type. If the lock
    is lost while the call runs, the call is cancelled and ``LockLost`` raised.
    """
    if not isinstance(skip_if_locked, bool):
        raise TypeError(f"skip_if_locked must be a bool, not {type(skip_if_locked).__name__}")
    # Check every lock option now, at decoration, not at the first call.
    LeasePolicy.build(
        ttl=ttl,
        extend_interval=extend_interval,
        max_hold=hold_at_most,
        hold_at_least=hold_at_least,
        replicas=replicas,
        replica_timeout=replica_timeout,
    )
    check_optional_seconds(timeout, "timeout")
    check_prefix(prefix)
    if limit is not None:
        check_count(limit, "limit")
    if skip_if_locked and timeout is not None:
        raise ValueError("a timeout cannot be given with skip_if_locked=True")

    def decorate(
        func: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R | None]]:
        signature, qualname, template = _shape_of(func, name, "locked")
        format_name = _name_formatter(template, signature)
        get_client = _client_getter(client, signature)

        def make_lock(lock_name: str, redis_client: Any) -> LeaseLock:
            options: dict[str, Any] = {
                "ttl": ttl,
                "timeout": None if skip_if_locked else timeout,
                "blocking": not skip_if_locked,
                "extend_interval": extend_interval,
                "max_hold": hold_at_most,
                "hold_at_least": hold_at_least,
                "retry": retry,
                "replicas": replicas,
                "replica_timeout": replica_timeout,
                "prefix": prefix,
            }
            lock: LeaseLock
            if limit is None:
                lock = Mutex(redis_client, lock_name, **options)
            else:
                lock = Semaphore(redis_client, lock_name, limit=limit, **options)
            lock._template = template  # events label the lock by it (bounded cardinality)
            return lock

        def event(
            kind: str,
            lock: LeaseLock,
            lock_name: str,
            lease: Lease | None,
            started: float,
            error: BaseException | None = None,
        ) -> None:
            if _events.listening(kind):
                _events.emit(
                    _events.LockEvent(
                        event=kind,
                        lock=lock_name,
                        key=lock.key,
                        token=None if lease is None else lease.token,
                        fencing_token=None if lease is None else lease.fencing_token,
                        duration=time.monotonic() - started,
                        error=error,
                        task=qualname,
                        at=_events.now(),
                        primitive=lock._primitive,
                        template=template,
                    )
                )

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            lock_name = format_name(bound.arguments)
            lock = make_lock(lock_name, get_client(bound.arguments))
            started = time.monotonic()
            lease: Lease | None = None
            try:
                async with lock as lease:
                    event("task_started", lock, lock_name, lease, started)
                    result = await func(*args, **kwargs)
            except LockNotAcquired as error:
                if lease is None and skip_if_locked:
                    event("task_skipped", lock, lock_name, None, started)
                    return None
                event("task_failed", lock, lock_name, lease, started, error)
                event("task_finished", lock, lock_name, lease, started)
                raise
            except BaseException as error:
                # Cancellation is not failure (a loss is: it raises LockLost).
                cancelled = isinstance(error, asyncio.CancelledError)
                outcome = "task_cancelled" if cancelled else "task_failed"
                event(outcome, lock, lock_name, lease, started, error)
                event("task_finished", lock, lock_name, lease, started)
                raise
            event("task_succeeded", lock, lock_name, lease, started)
            event("task_finished", lock, lock_name, lease, started)
            return result

        return wrapper

    return decorate


def _shape_of(
    func: Callable[..., Any], name: str | None, decorator: str
) -> tuple[inspect.Signature, str, str]:
    """Check that ``@decorator`` can wrap ``func``; return its signature, its qualified
    name, and the name template of its calls (``name``, or that qualified name)."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"@{decorator} needs a coroutine function (async def), not {func!r}")
    own_name = getattr(func, "__qualname__", None)  # a functools.partial has none
    if own_name is None and name is None:
        raise TypeError(f"@{decorator} needs a name for {func!r}, which has no __qualname__")
    qualname = f"{func.__module__}.{own_name}" if own_name is not None else repr(func)
    return inspect.signature(func), qualname, qualname if name is None else name


def _name_formatter(template: str, signature: inspect.Signature) -> Callable[[dict[str, Any]], str]:
    """Check the template's fields against the parameters; return its formatter."""
    if not isinstance(template, str):
        raise TypeError(f"a lock name template must be a str, not {type(template).__name__}")
    if not template:
        raise ValueError("a lock name template must not be empty")
    fields = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(
                f"lock name template {template!r} must name parameters, as in '{{user_id}}'"
            )
        fields.add(root)
    unknown = fields - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"lock name template {template!r} names unknown parameters {sorted(unknown)}; "
            f"the function takes {list(signature.parameters)}"
        )
    if not fields:
        return lambda arguments: template
    return lambda arguments: template.format(**arguments)


def _client_getter(source: ClientSource, signature: inspect.Signature) -> Callable[[Any], Any]:
    """Return how a call finds its client: given, an attribute, or a callable."""
    parameters = list(signature.parameters)
    if isinstance(source, str):
        if not parameters:
            raise TypeError(f"client={source!r} names an attribute, but the function has no self")
        first = parameters[0]
        return lambda arguments: getattr(arguments[first], source)
    if callable(source) and not callable(getattr(source, "evalsha", None)):
        takes = [
            parameter
            for parameter in inspect.signature(source).parameters.values()
            if parameter.default is parameter.empty
            and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
        if not takes:
            return lambda arguments: source()
        if not parameters:
            raise TypeError("the client callable takes an argument, but the function has none")
        first = parameters[0]
        return lambda arguments: source(arguments[first])
    check_client(source)
    return lambda arguments: source


def single_flight(
    name: str | None = None,
    *,
    client: ClientSource,
    ttl: float = 30.0,
    timeout: float | None = None,
    keep_for: float | None = None,
    serializer: Serializer | None = None,
    max_outcome: int = MAX_OUTCOME,
    replicas: int = 0,
    replica_timeout: float = 1.0,
    prefix: str = DEFAULT_PREFIX,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a coroutine function (or method) so that concurrent calls with the same
    flight name, in any process, run it once and share its outcome
    (:class:`~asynclock.SingleFlight`)::

        class Reports:
            def __init__(self, redis): self.redis = redis

            @single_flight("report:{user_id}", client="redis", timeout=20.0)
            async def build(self, user_id: int) -> dict: ...

    :param name: the flight's name, a template formatted with the call's arguments by
        parameter name (as for :func:`locked`); default: the function's module and
        qualified name
    :param client: the ``redis.asyncio`` client, the name of an attribute of the first
        argument, or a callable returning the client (as for :func:`locked`)
    :param ttl: the leader's lease, in seconds
    :param timeout: the longest a call waits for another's run, in seconds
    :param keep_for: how long a value stays for calls arriving after the run, in seconds
    :param serializer: how values are encoded (default: JSON)
    :param max_outcome: the largest encoded value, in bytes
    :param replicas: replicas that must acknowledge the leader's lease
    :param replica_timeout: how long to wait for them, in seconds
    :param prefix: the key prefix
    :raises TypeError: at decoration, if the function is not a coroutine function or an
        argument has the wrong type
    :raises ValueError: at decoration, if the template names an unknown parameter or
        an argument is out of range

    The wrapped function keeps its name, docstring, signature and type.
    """
    LeasePolicy.build(ttl=ttl, replicas=replicas, replica_timeout=replica_timeout)
    check_flight(timeout, keep_for, serializer, max_outcome)
    check_prefix(prefix)

    def decorate(
        func: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        signature, _, template = _shape_of(func, name, "single_flight")
        format_name = _name_formatter(template, signature)
        get_client = _client_getter(client, signature)

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            flight = SingleFlight(
                get_client(bound.arguments),
                format_name(bound.arguments),
                ttl=ttl,
                timeout=timeout,
                keep_for=keep_for,
                serializer=serializer,
                max_outcome=max_outcome,
                replicas=replicas,
                replica_timeout=replica_timeout,
                prefix=prefix,
            )
            return await flight.run(func, *args, **kwargs)

        return wrapper

    return decorate
