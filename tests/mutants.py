"""Planted bugs: does the suite catch each realistic mistake? (``make mutants``)

Each mutant is one small change to the package, a bug someone could plausibly write.
For each, the package and the tests are copied to a temporary folder, the change is
applied there (the working tree is never touched), and pytest runs first the tests
most likely to catch it, then, if those pass, the whole suite less the slow
multi-process files. A mutant is KILLED when a test fails, SURVIVED otherwise; the
exit status is 1 if any survived, so a survivor points at a missing test.

    python -m tests.mutants            # all, one after another
    python -m tests.mutants --list     # what they are
    python -m tests.mutants --only ID  # one (repeat --only for several)

The old text of each mutant must appear exactly once in its file: when the code
moves, the list is updated with it (the runner says which mutant no longer applies).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The whole-suite pass leaves out the files that start worker processes or run for
# long (they guard other things, and would make each survivor cost minutes).
SLOW = ("tests/test_processes.py", "tests/test_pause.py", "tests/test_demo.py")
# The check that every bug below still applies: in a tree with one planted, it fails.
PLANTED = "tests/test_mutants.py"
# Per pytest run: a mutant that makes a test hang is killed by the timeout.
TARGETED_TIMEOUT = 180
SUITE_TIMEOUT = 600


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``old`` by ``new`` in ``path``; ``tests`` go first."""

    id: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "drift-after-extend",
        "an extension moves the deadline to send + ttl, without the drift allowance",
        "asynclock/_lease.py",
        "self._deadline = max(self._deadline, lease_deadline(sent, self._policy.ttl))",
        "self._deadline = max(self._deadline, sent + self._policy.ttl)",
        ("tests/test_safety_net.py",),
    ),
    Mutant(
        "check-before-subscribe",
        "the waiter reads whether the lock is held without having subscribed first",
        "asynclock/_acquire.py",
        "        await queue.watch()  # subscribed (confirmed) before the read below\n",
        "",
        ("tests/test_safety_net.py", "tests/test_notify.py"),
    ),
    Mutant(
        "never-unsubscribe",
        "the notifier's sweep never unsubscribes channels nobody waits on",
        "asynclock/_notify.py",
        "unwanted = [channel for channel in self._subscribed if channel not in self._events]",
        "unwanted: list[str] = []",
        ("tests/test_safety_net.py", "tests/test_notify.py"),
    ),
    Mutant(
        "interval-against-ttl",
        "extend_interval is checked against the whole TTL, not TTL less the drift",
        "asynclock/_timing.py",
        "usable = checked_ttl - drift_allowance(checked_ttl)",
        "usable = checked_ttl",
        ("tests/test_safety_net.py", "tests/test_lease.py"),
    ),
    Mutant(
        "no-tombstone",
        "a release leaves no tombstone for its token",
        "asynclock/scripts/common.lua",
        "  if redis.call('LPUSH', tombstone, token) > RECENT_RELEASES_MAX then\n"
        "    redis.call('LTRIM', tombstone, 0, RECENT_RELEASES - 1)\n"
        "  end\n"
        "  redis.call('PEXPIRE', tombstone, ms)\n",
        "  -- (no tombstone)\n",
        ("tests/test_safety_net.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "exit-swallows-loss",
        "the exit of a body cancelled by a loss does not raise LockLost",
        "asynclock/_lease.py",
        "            if ours_cancel_only and loss is not None:\n"
        "                raise loss from None\n",
        "",
        ("tests/test_safety_net.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "exit-swallows-loss-at-release",
        "a loss found at release is not raised from a body that ended normally",
        "asynclock/_lease.py",
        "        if exc is None:\n            if loss is not None:\n                raise loss\n",
        "        if exc is None:\n",
        ("tests/test_safety_net.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "fence-not-increasing",
        "a fencing token repeats the last one when the counter is ahead of the clock",
        "asynclock/scripts/common.lua",
        "    return last + 1\n",
        "    return last\n",
        ("tests/test_safety_net.py", "tests/test_scripts.py"),
    ),
    Mutant(
        "release-any-token",
        "a release deletes the key whoever holds it",
        "asynclock/scripts/common.lua",
        "    if redis.call('GET', owner) == token then",
        "    if redis.call('EXISTS', owner) == 1 then",
        ("tests/test_scripts.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "tombstone-keeps-one-token",
        "a release's tombstone keeps only its own token, forgetting the name's others",
        "asynclock/scripts/common.lua",
        "  if redis.call('LPUSH', tombstone, token) > RECENT_RELEASES_MAX then\n"
        "    redis.call('LTRIM', tombstone, 0, RECENT_RELEASES - 1)\n",
        "  if redis.call('LPUSH', tombstone, token) > 1 then\n"
        "    redis.call('LTRIM', tombstone, 0, 0)\n",
        ("tests/test_scripts.py",),
    ),
    Mutant(
        "tombstone-unbounded",
        "a release's tombstone keeps every token ever released on the name",
        "asynclock/scripts/common.lua",
        "    redis.call('LTRIM', tombstone, 0, RECENT_RELEASES - 1)\n",
        "",
        ("tests/test_scripts.py",),
    ),
    Mutant(
        "extend-any-token",
        "an extension does not check that the key still holds our token",
        "asynclock/scripts/extend.lua",
        "  if redis.call('GET', KEYS[i]) ~= ARGV[1] then",
        "  if false then",
        ("tests/test_scripts.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "cancelled-acquire-not-cleaned",
        "a cancelled acquire whose try was in flight releases nothing",
        "asynclock/_acquire.py",
        "        except asyncio.CancelledError:\n            if self.may_hold:\n"
        "                await self._abandon()\n            raise\n",
        "        except asyncio.CancelledError:\n            raise\n",
        ("tests/test_acquisition.py", "tests/test_mutex.py"),
    ),
    Mutant(
        "hand-over-jumps-line",
        "a release hands over inside its process even when another process is first",
        "asynclock/scripts/hand_over.lua",
        "    if ARGV[7] ~= '1' then",
        "    if false then",
        ("tests/test_scripts.py", "tests/test_notify.py"),
    ),
    Mutant(
        "loss-leaves-body-running",
        "a lost lease does not cancel the body that holds it",
        "asynclock/_lease.py",
        "            and holder is not asyncio.current_task()\n        ):\n"
        "            self._cancel_holder(holder, loss)\n",
        "            and holder is not asyncio.current_task()\n        ):\n            pass\n",
        ("tests/test_mutex.py",),
    ),
    Mutant(
        "claimed-hand-over-forgotten",
        "a waiter forgets that a release claimed a hand-over to its token",
        "asynclock/_acquire.py",
        "self.maybe_handed = self.maybe_handed or (offer is not None and offer.claimed)",
        "self.maybe_handed = self.maybe_handed",
        ("tests/test_acquisition.py", "tests/test_notify.py"),
    ),
    Mutant(
        "late-reply-accepted",
        "a grant whose reply came after the lease's deadline is kept",
        "asynclock/_acquire.py",
        "        if time.monotonic() >= lease_deadline(sent, policy.ttl):\n"
        "            return None\n",
        "",
        ("tests/test_safety_net.py", "tests/test_acquisition.py"),
    ),
    Mutant(
        "gave-up-holding-hand-over",
        "an acquire whose strategy gives up with a claimed hand-over releases nothing",
        "asynclock/_acquire.py",
        "        if lease is None and self.may_hold:\n",
        "        if False:\n",
        ("tests/test_acquisition.py",),
    ),
    Mutant(
        "swallowed-cancel-ignored",
        "a cancellation swallowed by a client call is not raised again",
        "asynclock/_acquire.py",
        "        if self._task.cancelling() > self._cancels:\n"
        "            raise asyncio.CancelledError\n",
        "",
        ("tests/test_acquisition.py",),
    ),
    Mutant(
        "stale-wake-up-kept",
        "a new head keeps the wake-up an earlier head left, and retries at once",
        "asynclock/_acquire.py",
        "        queue.event.clear()\n        try:\n            free = not await",
        "        try:\n            free = not await",
        ("tests/test_acquisition.py",),
    ),
    Mutant(
        "everyone-wakes",
        "a release message naming another process wakes this one too",
        "asynclock/_notify.py",
        "                if addressee and addressee != self.id:\n                    continue\n",
        "",
        ("tests/test_notify.py",),
    ),
    Mutant(
        "retries-counted-per-recheck",
        "every re-check inside a strategy's pause counts as a retry",
        "asynclock/_acquire.py",
        "            if lease is not None or last or queue.event.is_set():\n"
        "                return lease\n",
        "            return lease\n",
        ("tests/test_acquisition.py", "tests/test_statistics.py"),
    ),
)


def pytest_run(folder: Path, args: list[str], timeout: float) -> tuple[bool, str]:
    """Run pytest in ``folder``; return whether it passed and its last line."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *args]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    try:
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"no end within {timeout:.0f} s"
    lines = (done.stdout.strip() or done.stderr.strip() or "(no output)").splitlines()
    # The short summary names the test that failed: say which caught the mutant.
    failed = [
        line.split(" - ")[0]
        for line in lines
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line.split(" - ")[0]
    ]
    return done.returncode == 0, " ".join([*failed[:1], lines[-1]])


def run(mutant: Mutant) -> tuple[bool, str]:
    """Plant ``mutant`` in a copy of the tree; return whether it was killed, and how."""
    with tempfile.TemporaryDirectory(prefix="asynclock-mutant-") as tmp:
        folder = Path(tmp)
        for part in ("asynclock", "tests", "examples"):
            shutil.copytree(ROOT / part, folder / part)
        for part in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / part, folder)
        target = folder / mutant.path
        source = target.read_text()
        found = source.count(mutant.old)
        if found != 1:
            raise SystemExit(
                f"mutant {mutant.id}: its old text appears {found} times in {mutant.path}, "
                "not once; update the list"
            )
        target.write_text(source.replace(mutant.old, mutant.new))
        passed, last = pytest_run(folder, list(mutant.tests), TARGETED_TIMEOUT)
        if not passed:
            return True, f"by {', '.join(mutant.tests)}: {last}"
        ignore = [f"--ignore={path}" for path in (*SLOW, PLANTED)]
        passed, last = pytest_run(folder, ["tests", *ignore], SUITE_TIMEOUT)
        return not passed, f"by the suite: {last}"


def main(argv: list[str] | None = None) -> int:
    """Run the mutants asked for; print one line each and a summary."""
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--only", action="append", metavar="ID", help="run only this mutant")
    options = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not options.only or m.id in options.only]
    unknown = set(options.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    if options.list:
        for mutant in chosen:
            print(f"{mutant.id:32s} {mutant.path:32s} {mutant.what}")
        return 0
    started = time.monotonic()
    survivors = []
    for mutant in chosen:
        killed, how = run(mutant)
        print(f"{'KILLED  ' if killed else 'SURVIVED'} {mutant.id:32s} {how}", flush=True)
        if not killed:
            survivors.append(mutant.id)
    elapsed = time.monotonic() - started
    print(
        f"{len(chosen) - len(survivors)} killed, {len(survivors)} survived "
        f"of {len(chosen)} mutants in {elapsed:.0f} s"
        + (f": {', '.join(survivors)}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
