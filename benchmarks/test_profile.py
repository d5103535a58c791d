"""``python -m benchmarks.profile`` end to end, on a private server, with few operations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_costs_and_the_profiles_are_printed() -> None:
    command = [sys.executable, "-m", "benchmarks.profile", "--operations", "100",
               "--rounds", "1", "--seconds", "0.3", "--functions", "5"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    labels = (
        "Mutex acquire+release",
        "redis-py Lock acquire+release",
        "two empty scripts (the floor)",
        "64 waiters, one section",
    )
    rows = {
        label: [float(figure) for figure in line[len(label) :].split()]
        for line in done.stdout.splitlines()
        for label in labels
        if line.startswith(label) and not line.endswith(":")
    }
    assert set(rows) == set(labels)
    for wall, client, server, _scripts, commands in rows.values():
        assert min(wall, client, server) > 0
        assert commands >= 1
    # Each Mutex pair runs two scripts (an acquire and a release) and their commands.
    assert rows["Mutex acquire+release"][3] > 0
    assert rows["Mutex acquire+release"][4] >= 4
    # The floor is two script calls and nothing else: no command inside them.
    assert rows["two empty scripts (the floor)"][4] == 2.0
    assert "uncontended pairs/s against redis-py's:" in done.stdout
    assert "the floor's pairs/s against redis-py's:" in done.stdout
    assert done.stdout.count("own us/op") == 2


def test_an_operation_count_out_of_bounds_is_refused() -> None:
    command = [sys.executable, "-m", "benchmarks.profile", "--operations", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "must be from 1" in done.stderr
