"""``python -m asynclock`` (or ``asynclock``): inspect, free and watch locks; demo; bench.

Exit status: 0 done; 1 nothing done (the lock was not held, or the release was not
confirmed); 2 a usage error (a release without ``--force`` included); 3 the server
could not be used (unreachable, wrong password, missing ACL permission, an error
reply).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import fnmatch
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from ._admin import LockState, force_release, glob_escape, inspect_lock, inspect_locks, name_of
from ._connect import redacted
from ._names import DEFAULT_PREFIX
from ._validate import check_name, check_prefix

DEFAULT_URL = "redis://localhost:6379"

OK, NOTHING_DONE, USAGE, SERVER = 0, 1, 2, 3

#: What a holder whose lock was freed by force goes through, said after a release.
AFTER_FORCE = (
    "The holder (each, for a semaphore) finds out at its next extension (within a third "
    "of its TTL with auto-extend): its lease is lost, its body cancelled and LockLost "
    "raised. Its release, whenever it comes, finds the lease gone and says so. Fencing "
    "tokens let your storage refuse the old holder's late writes."
)


class CommandError(Exception):
    """A failure to report in one line, with the exit status it carries."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def connect(url: str) -> Any:
    """A client of ``url``: a cluster client when the server is in cluster mode."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("memory", "postgresql", "postgres"):
        raise CommandError(
            f"bad --url {redacted(url)!r}: the command line works on Redis only", USAGE
        )
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    except ValueError as exc:
        raise CommandError(f"bad --url {redacted(url)!r}: {exc}", USAGE) from None
    try:
        info = await client.info("cluster")
    except BaseException:
        await client.aclose()
        raise
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    return RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=10)


async def with_client(url: str, work: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``work(client)``, turning server failures into one line and status 3."""
    client = None
    try:
        client = await connect(url)
        return await work(client)
    except AuthenticationError as exc:
        raise CommandError(f"authentication failed at {redacted(url)}: {exc}", SERVER) from None
    except NoPermissionError as exc:
        raise CommandError(
            f"permission denied at {redacted(url)}: {exc} (README, Permissions, lists"
            " the ACL rules asynclock needs, and those of its command line)",
            SERVER,
        ) from None
    except ResponseError as exc:
        raise CommandError(f"the server at {redacted(url)} replied: {exc}", SERVER) from None
    except (RedisError, RedisClusterException, OSError) as exc:
        raise CommandError(f"cannot reach {redacted(url)}: {exc}", SERVER) from None
    finally:
        if client is not None:
            await client.aclose()


def short(token: str) -> str:
    """A token shortened for a table: enough to tell holders apart."""
    return token[:8]


def seconds(value: float | None) -> str:
    """``12.3 s``, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.1f} s"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def state_rows(state: LockState) -> list[list[str]]:
    """A lock's rows in the ``inspect`` table: one per holder (or one, if none)."""
    kind: str = state.primitive
    if state.primitive == "semaphore":
        in_use = sum(holder.permits for holder in state.holders)
        kind = f"semaphore {in_use}/{state.limit if state.limit is not None else '?'}"
    waiting = "-" if state.primitive == "semaphore" else str(state.waiting)
    if not state.holders:
        return [[state.name, kind, "-", "-", "-", "-", waiting]]
    return [
        [
            state.name,
            kind if holder.side is None else f"rwlock {holder.side}",
            short(holder.token),
            seconds(holder.ttl),
            "-" if holder.fencing_token is None else str(holder.fencing_token),
            seconds(holder.held_for),
            waiting,
        ]
        for holder in state.holders
    ]


def as_json(value: Any) -> str:
    """``value`` (dataclasses included) as one line of JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(item) for item in value]
    return json.dumps(value, sort_keys=True)


async def run_inspect(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``inspect [PATTERN]``: list the locks held or waited for."""
    states = await inspect_locks(client, args.pattern, prefix=args.prefix)
    if args.json:
        print(as_json(states), file=out)
    elif not states:
        print(
            f"no lock held or waited for under {args.prefix!r} matching {args.pattern!r}",
            file=out,
        )
    else:
        header = ["NAME", "PRIMITIVE", "HOLDER", "TTL", "FENCING TOKEN", "HELD FOR", "WAITING"]
        rows = [header, *(row for state in states for row in state_rows(state))]
        print(table(rows), file=out)
    return OK


def confirm(question: str) -> bool:
    """Ask on stderr; yes only for ``y``/``yes`` on stdin."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in {"y", "yes"}


async def run_release(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``release NAME --force``: free a lock whoever holds it."""
    state = await inspect_lock(client, args.name, prefix=args.prefix)
    if state is None:
        if args.json:
            print(as_json({"name": args.name, "held": False, "released": []}), file=out)
        else:
            print(f"{args.name!r} is not held: nothing to release", file=out)
        return NOTHING_DONE
    holders = ", ".join(
        f"{short(holder.token)} (held for {seconds(holder.held_for)},"
        f" fencing token {holder.fencing_token if holder.fencing_token is not None else '-'})"
        for holder in state.holders
    )
    if not args.yes and not confirm(f"release {state.primitive} {args.name!r} held by {holders}?"):
        print("not released", file=out)
        return NOTHING_DONE
    released = await force_release(client, state, prefix=args.prefix)
    if args.json:
        print(as_json({"name": args.name, "held": True, "released": list(released)}), file=out)
        return OK if released else NOTHING_DONE
    if not released:
        print(f"{args.name!r} was released meanwhile by its holder: nothing to do", file=out)
        return NOTHING_DONE
    print(f"released {state.primitive} {args.name!r} from {holders}", file=out)
    print(textwrap.fill(AFTER_FORCE, 88), file=out)
    return OK


#: Keyspace events that say what happened to an owner key (with `K$gx` enabled).
_KEYSPACE_FLAGS = "K$gx"


async def run_watch(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``watch [PATTERN]``: print lock events as they happen, until Ctrl-C."""
    if isinstance(client, RedisCluster):
        return await _watch_cluster(client, args, out)
    # One pattern per kind of channel, the prefix and `*`: an ACL user's `&` rules
    # are matched literally against the patterns it subscribes to.
    literal = glob_escape(args.prefix)
    channels = [f"{literal}*"]
    keyspace = await _keyspace_prefix(client)
    if keyspace is not None:
        channels.append(f"{keyspace}{literal}*")
    elif not args.json:
        print(
            "keyspace notifications are off: showing releases that wake a waiter only."
            f" With `CONFIG SET notify-keyspace-events {_KEYSPACE_FLAGS}`, acquisitions,"
            " hand-overs, every release and expiries show too.",
            file=sys.stderr,
        )
    pubsub = client.pubsub()
    try:
        await _psubscribe(pubsub, channels)
        return await _print_events([pubsub], keyspace, args, out)
    finally:
        await pubsub.aclose()


async def _watch_cluster(cluster: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``watch`` on a cluster: the keyspace events of every primary.

    A cluster's releases are published on their name's shard (``SPUBLISH``), which no
    pattern subscription hears; keyspace events stay on the node where they happen.
    """
    await cluster.initialize()
    nodes: list[Any] = [
        redis.Redis.from_url(_at_node(args.url, node.host, node.port))
        for node in cluster.get_primaries()
    ]
    pubsubs = []
    try:
        prefixes = [await _keyspace_prefix(node) for node in nodes]
        if None in prefixes:
            raise CommandError(
                "on a cluster, watch needs keyspace notifications on every primary"
                f" (`CONFIG SET notify-keyspace-events {_KEYSPACE_FLAGS}` on each): a"
                " release is published on its name's shard only, which no pattern hears",
                USAGE,
            )
        keyspace = prefixes[0]
        for node in nodes:
            pubsubs.append(node.pubsub())
            await _psubscribe(pubsubs[-1], [f"{keyspace}{glob_escape(args.prefix)}*"])
        return await _print_events(pubsubs, keyspace, args, out)
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()
        for node in nodes:
            await node.aclose()


def _at_node(url: str, host: str, port: int) -> str:
    """``url`` (its credentials, database, options) pointed at ``host:port``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _psubscribe(pubsub: Any, channels: list[str]) -> None:
    """Subscribe to ``channels`` (patterns), and wait for the server's confirmation."""
    await pubsub.psubscribe(*channels)
    confirmed, until = 0, asyncio.get_running_loop().time() + 10
    while confirmed < len(channels):  # only then is every later event seen
        if asyncio.get_running_loop().time() > until:
            raise CommandError("the server did not confirm the subscriptions", SERVER)
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "psubscribe":
            confirmed += 1


async def _print_events(
    pubsubs: list[Any], keyspace: str | None, args: argparse.Namespace, out: TextIO
) -> int:
    held: set[str] = set()  # owner keys seen set and not yet freed
    deadline = None if args.seconds is None else asyncio.get_running_loop().time() + args.seconds
    if not args.json:
        print(f"watching {args.pattern!r} under {args.prefix!r}", file=out, flush=True)
    # Each connection read in turn, briefly: one is the usual case, a few on a cluster.
    wait = 0.2 / len(pubsubs)
    while deadline is None or asyncio.get_running_loop().time() < deadline:
        for pubsub in pubsubs:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is None:
                continue
            event = _event_of(args.prefix, keyspace, message, held)
            if event is None or not _matches(event["name"], args.pattern):
                continue
            if args.json:
                print(as_json(event), file=out, flush=True)
            else:
                print(f"{event['at']}  {event['event']:<12} {event['name']}  {event['detail']}"
                      .rstrip(), file=out, flush=True)  # fmt: skip
    return OK


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


async def _keyspace_prefix(client: Any) -> str | None:
    """The channel prefix of keyspace events for the client's database, if enabled."""
    try:
        flags = str((await client.config_get("notify-keyspace-events")).get(
            "notify-keyspace-events", ""))  # fmt: skip
    except (NoPermissionError, ResponseError):
        return None
    enabled = "K" in flags and ("A" in flags or all(flag in flags for flag in "$gx"))
    if not enabled:
        return None
    db = getattr(client, "connection_pool", None)
    number = 0 if db is None else int(db.connection_kwargs.get("db", 0) or 0)
    return f"__keyspace@{number}__:"


def _event_of(
    prefix: str, keyspace: str | None, message: dict[str, Any], held: set[str]
) -> dict[str, str] | None:
    """What a pub/sub message says happened, as printed by ``watch``; ``None``: nothing."""
    channel = message["channel"].decode()
    data = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
    at = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if keyspace is not None and channel.startswith(keyspace):
        key = channel[len(keyspace) :]
        name = name_of(prefix, "lock", key)
        if name is None:
            return None
        if data == "set":
            event = "handed over" if key in held else "acquired"
            held.add(key)
        elif data in {"del", "expired"}:
            held.discard(key)
            event = "released" if data == "del" else "expired"
        else:
            return None  # pexpire: an extension, too frequent to show
        detail = "(the holder never released it)" if event == "expired" else ""
        return {"at": at, "event": event, "name": name, "detail": detail}
    if channel.endswith(":holders"):
        name = name_of(prefix, "semaphore", channel.removesuffix(":holders"))
        if name is not None:
            return {"at": at, "event": "permit freed", "name": name, "detail": ""}
    name = name_of(prefix, "lock", channel)
    if name is None or keyspace is not None:
        return None  # with keyspace events, their `del` says it already
    detail = f"(wakes process {data})" if data else "(wakes every waiter)"
    return {"at": at, "event": "released", "name": name, "detail": detail}


def parser() -> argparse.ArgumentParser:
    """The command line's parser: every subcommand with its ``--help``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("ASYNCLOCK_URL", DEFAULT_URL),
        help=f"the server (default: $ASYNCLOCK_URL, then {DEFAULT_URL})",
    )
    common.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="the key prefix (default %(default)s)"
    )
    common.add_argument("--json", action="store_true", help="JSON output, for scripts")
    top = argparse.ArgumentParser(
        # As it was run: the console script, or the module.
        prog="asynclock" if os.path.basename(sys.argv[0]) == "asynclock" else "python -m asynclock",
        description="Inspect, free and watch asynclock's locks; run the demo or the benchmarks.",
        epilog="Exit status: 0 done, 1 nothing done, 2 usage error, 3 server unusable.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect", parents=[common], help="list the locks held or waited for",
        description="Every lock held or waited for: holder, time left, fencing token,"
        " how long held (from the fencing token), processes waiting. Uses SCAN.",
    )  # fmt: skip
    inspect.add_argument("pattern", nargs="?", default="*", help="a glob on names (default *)")
    release = commands.add_parser(
        "release", parents=[common], help="free a held lock, whoever holds it",
        description="Free a lock whoever holds it (every holder of a semaphore), waking"
        " its waiters; unlike a release, it leaves no tombstone, so the holder's own"
        " release reports the loss. " + AFTER_FORCE,
    )  # fmt: skip
    release.add_argument("name", help="the lock's name")
    release.add_argument(
        "--force", action="store_true", help="required: this is no release by its owner"
    )
    release.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    watch = commands.add_parser(
        "watch", parents=[common], help="print lock events as they happen, until Ctrl-C",
        description="Releases as they happen (from the release channels), and with keyspace"
        f" notifications enabled (notify-keyspace-events {_KEYSPACE_FLAGS}) acquisitions,"
        " hand-overs and expiries too.",
    )  # fmt: skip
    watch.add_argument("pattern", nargs="?", default="*", help="a glob on names (default *)")
    watch.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    commands.add_parser("demo", help="worker processes contending for locks (see demo --help)")
    commands.add_parser("bench", help="the benchmark report (from a source checkout)")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "demo":
        from ._demo import main as demo

        return demo(args_list[1:])
    if args_list and args_list[0] == "bench":
        if os.path.isfile(os.path.join("benchmarks", "__main__.py")):
            sys.path.insert(0, os.getcwd())  # a source checkout: its benchmarks
        try:
            bench = importlib.import_module("benchmarks.__main__").main
        except ImportError:
            print("the benchmarks come with the source repository: run `make bench` there",
                  file=sys.stderr)  # fmt: skip
            return USAGE
        return int(bench(args_list[1:]))
    args = parser().parse_args(args_list)
    try:
        check_prefix(args.prefix)
        if args.command == "release":
            check_name(args.name)
        if args.command == "release" and not args.force:
            raise CommandError(
                f"refusing to release {args.name!r} without --force: a forced release frees"
                " it whoever holds it (see `inspect` first, and `release --help`)",
                USAGE,
            )
        if args.command == "watch" and args.seconds is not None and not args.seconds > 0:
            raise CommandError("--seconds must be positive", USAGE)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    run = {"inspect": run_inspect, "release": run_release, "watch": run_watch}[args.command]
    try:
        return asyncio.run(with_client(args.url, lambda client: run(client, args, sys.stdout)))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return OK  # Ctrl-C is how `watch` ends
