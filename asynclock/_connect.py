"""``connect(url)``: from configuration to a backend, with an explicit driver rule.

``connect(url)`` uses the store the URL names, or fails at connect time with
``LockBackendError``. ``connect(url, fallback="memory")`` is the *auto* driver: when
the store cannot be reached at connect time it returns a :class:`MemoryBackend`, and
says so loudly (a WARNING, a ``backend_fallback`` event, and the backend's
``fell_back_from``). The choice is made once, here: a backend never switches stores
afterwards, so no held lock ever changes store under its holder.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from . import _events
from ._aio import within
from ._backend import Backend
from ._errors import LockBackendError
from ._memory import MemoryBackend
from ._redis import RedisBackend
from ._resource import BACKEND_ERRORS, is_transient

_log = logging.getLogger("asynclock")

#: The URL schemes :func:`connect` knows.
SCHEMES: Final = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
    "postgresql",
    "postgres",
)


async def connect(
    url: str,
    *,
    fallback: Literal["memory"] | None = None,
    timeout: float = 5.0,
    **options: Any,
) -> Backend:
    """Connect to the lock store ``url`` names, and check that it answers.

    ::

        backend = await connect(os.environ["LOCKS_URL"])  # redis://cache:6379/0
        async with Mutex(backend, "jobs:report"):
            ...

    URLs: ``memory://`` (this process only); ``postgresql://user@host/db`` (the
    ``postgres`` extra: asyncpg; ``options`` go to its pool, ``max_connections=``
    sizes it); ``redis://``, ``rediss://`` and
    ``unix://`` as redis-py reads them (``redis://:password@host:6379/0``);
    ``redis+sentinel://host:26379,host2:26379/<service>[/<db>]`` (credentials in the
    URL are the primary's; ``sentinel_kwargs=`` in ``options`` for the sentinels');
    ``redis+cluster://host:7000`` (any node; ``rediss+`` for TLS).

    :param url: where the locks live
    :param fallback: ``"memory"`` to use in-process locks when the store cannot be
        reached now: no connection, or no answer within ``timeout`` (they exclude
        nothing across processes: a WARNING and a ``backend_fallback`` event say so);
        a store that answers with an error (a wrong password, a missing database or
        permission) still raises. ``None`` (the default) to fail instead
    :param timeout: how long to wait for the store's first answer, in seconds
    :param options: passed to the redis-py client (``socket_timeout=``, ``password=``)
    :returns: the backend, to pass wherever a primitive takes a client; close it with
        ``await backend.aclose()`` or ``async with``
    :raises ValueError: an unknown scheme, a malformed URL, a bad ``fallback`` or
        ``timeout`` (before anything is sent)
    :raises LockBackendError: the store did not answer within ``timeout`` and there
        is no fallback, or it answered with an error
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if fallback not in (None, "memory"):
        raise ValueError(f"fallback must be None or 'memory', not {fallback!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"cannot connect to {redacted(url)!r}: the scheme must be one of {known}")
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ValueError(f"memory:// takes nothing after it, not {url!r}")
        return MemoryBackend()
    if scheme in ("postgresql", "postgres"):
        return await _postgres(url, fallback, timeout, options)
    client = _redis_client(scheme, url, options)
    try:
        await within(_first_answer(client), timeout)
    except (TimeoutError, *BACKEND_ERRORS) as exc:
        await client.aclose()
        unreachable = isinstance(exc, TimeoutError) or is_transient(exc)
        return _unanswered(url, exc, timeout, fallback, unreachable=unreachable)
    except BaseException:
        await client.aclose()
        raise
    return RedisBackend(client, owns_client=True)


def _unanswered(
    url: str, error: BaseException, timeout: float, fallback: str | None, *, unreachable: bool
) -> Backend:
    """The fallback for a store that could not be reached; the error for any other
    failure (a refused password, a missing database or permission: a deployment's
    mistake, which memory must not hide)."""
    if isinstance(error, TimeoutError):
        error = TimeoutError(f"no answer within {timeout:g} s")
    if fallback is None or not unreachable:
        raise LockBackendError(redacted(url), "connect", error, what="store") from error
    return _fall_back(url, error)


async def _postgres(
    url: str, fallback: str | None, timeout: float, options: dict[str, Any]
) -> Backend:
    try:
        from .postgres import PostgresBackend
    except ImportError as exc:
        raise ImportError("postgresql:// needs asyncpg: pip install 'asynclock[postgres]'") from exc
    import asyncpg

    try:
        return await within(PostgresBackend.connect(url, timeout=timeout, **options), timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Unreachable: no connection (a socket error, a timeout), or a server that is
        # not accepting connections yet (SQLSTATE class 08, 57P03: starting up).
        state = getattr(exc, "sqlstate", None) or ""
        unreachable = isinstance(exc, (TimeoutError, OSError)) or state[:2] == "08"
        unreachable = unreachable or state == "57P03"
        return _unanswered(url, exc, timeout, fallback, unreachable=unreachable)
    except ValueError as exc:  # asyncpg's reading of the URL
        raise ValueError(f"cannot connect to {redacted(url)!r}: {exc}") from None


async def _first_answer(client: Any) -> None:
    if isinstance(client, RedisCluster):
        await client.initialize()  # reads the cluster's map of slots
    await client.ping()


def _redis_client(scheme: str, url: str, options: dict[str, Any]) -> Any:
    """The redis-py client for ``url``; nothing is sent yet."""
    base, _, topology = scheme.partition("+")
    plain = base + url[len(scheme) :]  # the URL with a scheme redis-py knows
    if topology == "cluster":
        return RedisCluster.from_url(plain, **options)
    if topology == "sentinel":
        return _sentinel_primary(base, plain, options)
    return redis.asyncio.Redis.from_url(plain, **options)


def _sentinel_primary(base: str, url: str, options: dict[str, Any]) -> Any:
    parts = urlsplit(url)
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            f"{redacted(url)!r}: a sentinel URL ends in /<service name>[/<db>], "
            "as in redis+sentinel://host:26379/mymaster/0"
        )
    if parts.query:
        raise ValueError(
            f"{redacted(url)!r}: a sentinel URL takes no query; pass its options as"
            " keyword arguments to connect()"
        )
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"{redacted(url)!r}: each sentinel is host:port, not {host!r}")
        sentinels.append((name.removeprefix("[").removesuffix("]"), int(port)))  # IPv6
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if base == "rediss":
        options.setdefault("ssl", True)
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **options)  # type: ignore[no-untyped-call]
    return sentinel.master_for(
        path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


def _fall_back(url: str, error: BaseException) -> MemoryBackend:
    where = redacted(url)
    backend = MemoryBackend()
    backend.fell_back_from = where
    # A WARNING through the event's log record (backend_fallback's default level).
    _events.emit(
        _events.LockEvent(
            "backend_fallback",
            where,
            where,
            error=error,
            at=_events.now(),
            primitive="backend",
            outcome="memory",
        )
    )
    return backend


def redacted(url: str) -> str:
    """``url`` without its password (in its credentials or its query), for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, hosts = netloc.rpartition("@")
        netloc = f"{credentials.partition(':')[0]}:***@{hosts}"
    query = re.sub(r"(?i)(^|&)(password|passwd|pwd)=[^&]*", r"\1\2=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
