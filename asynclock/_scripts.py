"""Lua scripts: read once from ``scripts/*.lua``, run by SHA, reloaded on NOSCRIPT.

A script call is most of what an uncontended acquire or release costs the client, so
it takes the shortest path redis-py offers: a connection from the client's pool, the
command packed by hiredis (a dependency of ``redis[hiredis]``; redis-py's own packer
takes several times longer), ``send_packed_command`` and ``read_response`` under the
connection's own retry policy, as a redis-py pipeline does, with one timer for the
connection's ``socket_timeout`` around both (redis-py would spend a task and two
timers), or none when the caller's own time limit (``within``) ends first. That
leaves out only what ``execute_command`` adds around a command (response callbacks,
which script replies have none of, and redis-py's own metrics). Clients with a
connection of their own (``single_connection_client``) go through
``execute_command``; on Redis Cluster a script goes to its keys' node on one of the
cluster client's connections, and through ``execute_command`` only when the node
redirects it or fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._aio import bounded_within, within

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis older than 2.1: redis-py packs
    _hiredis_pack = None


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """How many replicas must acknowledge a lease's writes, and how long to wait.

    :ivar replicas: the replicas that must acknowledge (``WAIT``'s first argument)
    :ivar timeout_ms: how long to wait for them, in milliseconds (at least 1: ``WAIT``
        with 0 waits for ever)
    """

    replicas: int
    timeout_ms: int


class NotReplicated(RedisError):
    """Fewer replicas acknowledged a script's writes than the lock asks for."""


# The replica acknowledgement that granting scripts (acquire, extend) run now must
# get: set by the lease lifecycle around those calls only (see acknowledged_by), so
# that releases, reads and the resources' own code need not carry it.
_ACKNOWLEDGED_BY: ContextVar[ReplicaWait | None] = ContextVar("asynclock_replicas", default=None)


@contextlib.contextmanager
def acknowledged_by(wait: ReplicaWait | None) -> Iterator[None]:
    """Have the granting scripts called inside wait for ``wait``'s replicas (or not)."""
    if wait is None:
        yield
        return
    token = _ACKNOWLEDGED_BY.set(wait)
    try:
        yield
    finally:
        _ACKNOWLEDGED_BY.reset(token)


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script of the package, identified by its SHA1.

    Calling it sends ``EVALSHA``; a server that does not know the script (a new or
    restarted server, or ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the call falls
    back to ``EVAL`` with the full text once, which also caches it on that server.
    With Redis Cluster the client routes the call by its keys, which share one slot,
    and the script runs as :attr:`sharded`: releases published with ``SPUBLISH`` to
    that slot's shard alone, where a plain ``PUBLISH`` would go to every node.
    """

    name: str
    source: str
    #: Whether it grants or renews a lease: under :func:`acknowledged_by`, its writes
    #: must then reach the replicas asked for.
    grants: bool = False
    sha: str = field(init=False)
    #: The variant for cluster clients (itself if the script publishes nothing).
    sharded: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())
        sharded = self.source.replace(_PUBLISH, _SPUBLISH)
        variant = self if sharded == self.source else Script(self.name, sharded, self.grants)
        object.__setattr__(self, "sharded", variant)

    @classmethod
    def load(cls, name: str, *, after: tuple[str, ...] = (), grants: bool = False) -> Script:
        """Read ``scripts/<name>.lua`` from the package, after the scripts ``after``.

        Redis runs a script as one text, so code shared by several scripts (such as
        ``common.lua``) is put in front of each that uses it.
        """
        folder = resources.files(__package__).joinpath("scripts")
        parts = [folder.joinpath(f"{part}.lua").read_text() for part in (*after, name)]
        return cls(name, "\n".join(parts), grants)

    async def __call__(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """Run the script on ``client`` with ``keys`` and ``args``; return its reply.

        :raises NotReplicated: under :func:`acknowledged_by`, a granting script's
            writes did not reach enough replicas in time
        """
        if self.grants:
            wait = _ACKNOWLEDGED_BY.get()
            if wait is not None:
                return await self._run_and_wait(client, keys, args, wait)
        cluster = is_cluster(client)
        if cluster and self.sharded is not self:
            return await self.sharded(client, keys, args)
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            if cluster:
                return await _on_cluster(client, keys[0], command)
            return await run_command(client, *command)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    async def _run_and_wait(
        self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...], wait: ReplicaWait
    ) -> Any:
        """Run the script, then ``WAIT`` for the replicas, on one connection.

        ``WAIT`` counts the writes of its own connection, so both go in one pipeline
        (not a transaction): to the node of the keys, on a cluster.
        """
        cluster = is_cluster(client)
        script = self.sharded if cluster else self
        for attempt in range(2):
            run = ("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                if cluster:
                    reply, acknowledged = await _on_node(
                        client, keys[0], run, ("WAIT", wait.replicas, wait.timeout_ms)
                    )
                else:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.execute_command(*run)
                        pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
                        reply, acknowledged = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if cluster:  # the node may be gone (a failover): map the slots anew
                    await refresh_slots(client)
                raise
            if cluster and isinstance(reply, (MovedError, ClusterDownError)):
                await refresh_slots(client)  # the slot moved: the next try goes there
            if isinstance(reply, NoScriptError) and attempt == 0:
                load = ("SCRIPT", "LOAD", script.source)
                if cluster:
                    await _on_node(client, keys[0], load)
                else:
                    await client.execute_command(*load)
                continue  # then once more, by SHA
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            # Only a grant must be acknowledged: a refusal grants nothing to lose.
            if int(acknowledged) < wait.replicas and _granted(reply):
                raise NotReplicated(
                    f"{acknowledged} of {wait.replicas} replicas acknowledged the {self.name}"
                    f" within {wait.timeout_ms} ms"
                )
            return reply
        raise AssertionError("unreachable")  # pragma: no cover


# How the scripts publish a release, and how they do on a cluster. `pcall`: a server
# before 7.0 has no SPUBLISH, and its cluster clients poll (asynclock/_notify.py);
# the release goes on without publishing.
_PUBLISH = "redis.call('PUBLISH', "
_SPUBLISH = "redis.pcall('SPUBLISH', "


def _granted(reply: Any) -> bool:
    """Whether a granting script's reply grants: ``1`` (extend) or ``{1, ...}``."""
    if isinstance(reply, list):
        return bool(reply) and int(reply[0]) == 1
    return int(reply) == 1


_CLUSTER_TYPES: dict[type, bool] = {}


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (which routes commands by key)."""
    # Asked at every script call: a dict lookup by type, not isinstance (an ABC's).
    kind = type(client)
    found = _CLUSTER_TYPES.get(kind)
    if found is None:
        found = _CLUSTER_TYPES[kind] = isinstance(client, RedisCluster)
    return found


async def refresh_slots(cluster: Any) -> None:
    """Have a cluster client read which node serves which slot again.

    A replicated call, or a sharded subscription, goes to a node itself, past the
    cluster client's own redirections, so the client never learns of a failover or a
    migration from it: told here.
    """
    try:
        await cluster.nodes_manager.initialize()
    except Exception:
        return


async def _on_cluster(cluster: Any, key: str, command: tuple[Any, ...]) -> Any:
    """Send ``command`` straight to the node that owns ``key``; return its reply.

    The cluster client's ``execute_command`` spends more of the client's CPU than the
    command's round trip under load (routing, retries, redirections: about 40 us a
    call); a script's keys share one slot, so the node is known. Anything but a
    reply or an error of the script's own (a redirection, a slot in migration, a
    node gone or demoted) goes through ``execute_command``, which follows and retries
    it as usual.
    """
    try:
        (reply,) = await _on_node(cluster, key, command)
    except (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException):
        return await run_command(cluster, *command)
    if isinstance(reply, _REROUTED):
        return await run_command(cluster, *command)
    if isinstance(reply, Exception):
        raise reply
    return reply


# Errors by which a node says that a command is not for it, or not now.
_REROUTED = (AskError, MovedError, TryAgainError, ClusterDownError, ReadOnlyError)


async def _on_node(cluster: Any, key: str, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` in one write on one connection to the node that owns ``key``;
    return each one's reply, or its error.

    The connection is one of the cluster client's own for that node, so it is closed
    with the client. A connection error is raised: the caller maps the slots anew.
    """
    node = cluster.get_node_from_key(key)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the connection is still in step
                replies.append(exc)
        return replies
    except (AttributeError, RuntimeError) as exc:  # see _lost_connection
        lost = _lost_connection(exc)
        if lost is None:
            raise
        await _drop(conn)
        raise lost from exc
    finally:
        # A cancelled or failed read has disconnected the connection (redis-py does
        # it): it reconnects at its next use, so it goes back all the same.
        release = getattr(node, "release", None)
        if release is not None:
            release(conn)
        else:  # redis-py before 5.1: the node's free list
            node._free.append(conn)


async def _drop(conn: Any) -> None:
    """Disconnect ``conn``, in whatever state it is: it reconnects at its next use."""
    with contextlib.suppress(Exception):
        await conn.disconnect()


async def run_command(client: Any, *command: Any) -> Any:
    """Send ``command`` on a connection of ``client``'s pool; return the reply.

    Connection errors are retried as the connection's retry policy says, each after
    disconnecting (the connection reconnects on its next send); a cancelled read
    disconnects the connection too (redis-py does it), so no reply is ever read by
    the wrong command.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "single_connection_client", True):
        try:
            return await client.execute_command(*command)
        except (AttributeError, RuntimeError) as exc:  # see _lost_connection
            lost = _lost_connection(exc)
            if lost is None:
                raise
            raise lost from exc
    try:
        if _takes_command_name(type(pool)):
            conn = await pool.get_connection(command[0])
        else:
            conn = await pool.get_connection()
    except RuntimeError as exc:  # connecting wrote to a transport closed under it
        lost = _lost_connection(exc)
        if lost is None:
            raise
        raise lost from exc
    try:
        try:
            return await _send_and_read(conn, command)
        except BaseException as exc:
            error = exc
        # The connection's retry policy takes over as if it had made this first try
        # itself (it is handed its error first): the same tries, backoff and
        # disconnects, without a retry loop and two closures on every call. Out of
        # the handler, so that the errors of later tries do not chain to the first.
        return await conn.retry.call_with_retry(
            _tried_once(error, conn, command), lambda _error: conn.disconnect()
        )
    finally:
        await pool.release(conn)


def _tried_once(
    error: BaseException, conn: Any, command: tuple[Any, ...]
) -> Callable[[], Coroutine[Any, Any, Any]]:
    """A try for a retry policy whose first call fails with ``error`` (the try already
    made), and whose later calls send ``command`` on ``conn`` again."""
    failed: list[BaseException] = [error]

    async def attempt() -> Any:
        if failed:
            raise failed.pop()
        return await _send_and_read(conn, command)

    return attempt


async def _send_and_read(conn: Any, command: tuple[Any, ...]) -> Any:
    timeout = conn.socket_timeout
    if not timeout or _in_maintenance(conn):
        return await _exchange(conn, command)
    if not conn.is_connected:  # connecting keeps its own timeout and retries
        await conn.connect()
    # One timer for the whole exchange, where redis-py spends a task and a timer on the
    # write and another timer on the read: together the largest part of a script
    # call's cost to the client. The connection is ours alone until it goes back to
    # the pool, so its timeout is lifted only for this exchange.
    conn.socket_timeout = None
    try:
        if bounded_within(timeout):
            # A release's own time limit ends first: its timer cuts the exchange off,
            # and a cancelled exchange disconnects the connection all the same.
            return await _exchange(conn, command)
        return await within(_exchange(conn, command), timeout)
    except TimeoutError:
        # Cut off mid-exchange: disconnected (redis-py does it too), so that no late
        # reply is ever read by the next command.
        await _drop(conn)
        raise RedisTimeoutError(f"Timeout reading from the server after {timeout} s") from None
    finally:
        if conn.socket_timeout is None:  # else redis-py set one meanwhile: it stays
            conn.socket_timeout = timeout


def _in_maintenance(conn: Any) -> bool:
    """Whether redis-py (8.0 and later) has relaxed the connection's timeouts for a
    server's maintenance: it then changes them as the server says, so the exchange
    goes by redis-py's own timers."""
    state = getattr(conn, "maintenance_state", None)
    return state is not None and getattr(state, "name", "NONE") != "NONE"


async def _exchange(conn: Any, command: tuple[Any, ...]) -> Any:
    """Send ``command`` on ``conn`` and read its reply."""
    encoder = conn.encoder
    try:
        # hiredis writes text as UTF-8: other encodings are the client's to apply.
        if (
            _hiredis_pack is not None
            and encoder.encoding == "utf-8"
            and encoder.encoding_errors == "strict"
        ):
            await conn.send_packed_command(_hiredis_pack(command))
        else:
            await conn.send_command(*command)
    except RuntimeError as exc:
        lost = _lost_connection(exc)
        if lost is None:
            raise
        raise lost from exc
    return await conn.read_response()


def _lost_connection(error: Exception) -> RedisConnectionError | None:
    """The lost connection that ``error`` stands for, or ``None`` if it is not one.

    Some of a client's own faults come from a connection, or a node, lost under a
    command, and would escape as they are; they are reported (and retried) as the lost
    connections they are:

    - uvloop's ``RuntimeError`` for a write to a transport closed under it (asyncio's
      own loop raises an ``OSError`` there, which redis-py reports as a
      ``ConnectionError``);
    - redis-py's ``AttributeError`` for a connection reset by one command while another
      writes to it (``None`` has no ``writelines``), seen from its cluster client during
      a slot migration;
    - redis-py 5's ``RuntimeError`` from its cluster client mapping the slots anew while
      another command drops a node that failed (the dictionary of nodes changes size
      under the loop that reads it), seen during a failover.
    """
    text = str(error)
    if isinstance(error, RuntimeError):
        lost = "handler is closed" in text or "changed size during iteration" in text
    elif isinstance(error, AttributeError):
        lost = text.startswith("'NoneType' object has no attribute") and any(
            name in text for name in ("'writelines'", "'write'", "'drain'", "'read'")
        )
    else:
        lost = False
    return RedisConnectionError(f"Error while writing to the server: {error}") if lost else None


_NAMED: dict[type[Any], bool] = {}


def _takes_command_name(pool_type: type[Any]) -> bool:
    """Whether the pool's ``get_connection`` needs a command name (redis-py < 5.3)."""
    takes = _NAMED.get(pool_type)
    if takes is None:
        parameter = inspect.signature(pool_type.get_connection).parameters.get("command_name")
        takes = _NAMED[pool_type] = (
            parameter is not None and parameter.default is inspect.Parameter.empty
        )
    return takes


# Every script of the package, one per method of a Resource (asynclock/_resource.py):
# NamedLocks (asynclock/_names.py) runs the first four, SemaphorePermits
# (asynclock/_semaphore.py) the others. Each that uses common.lua gets it in front.
ACQUIRE = Script.load("acquire", after=("common",), grants=True)
EXTEND = Script.load("extend", grants=True)
RELEASE = Script.load("release", after=("common",))
HAND_OVER = Script.load("hand_over", after=("common",))
SEMAPHORE_ACQUIRE = Script.load("semaphore_acquire", after=("common",), grants=True)
SEMAPHORE_EXTEND = Script.load("semaphore_extend", after=("common",), grants=True)
SEMAPHORE_RELEASE = Script.load("semaphore_release", after=("common",))
SEMAPHORE_INSPECT = Script.load("semaphore_inspect", after=("common",))
# What an operator's forced release runs (asynclock/_admin.py): no tombstone.
FORCE_RELEASE = Script.load("force_release", after=("common",))
SEMAPHORE_FORCE_RELEASE = Script.load("semaphore_force_release", after=("common",))
# What an Election runs beside its lease (asynclock/_election.py).
ANNOUNCE = Script.load("announce", after=("common",))
LEADER = Script.load("leader")
# The single flight's (asynclock/_flight.py).
LOOK = Script.load("look", after=("common",))
LAND = Script.load("land", after=("common",))
WAKE = Script.load("wake")
# The read-write lock's (asynclock/_rwlock.py).
RW_ACQUIRE = Script.load("rw_acquire", after=("common",), grants=True)
RW_EXTEND = Script.load("rw_extend", after=("common",), grants=True)
RW_RELEASE = Script.load("rw_release", after=("common",))
RW_LEAVE = Script.load("rw_leave")
RW_INSPECT = Script.load("rw_inspect", after=("common",))
RW_FORCE_RELEASE = Script.load("rw_force_release")
