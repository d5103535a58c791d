"""``python -m benchmarks.memory`` end to end, on a private server, with few objects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_memory_figures_are_printed() -> None:
    command = [sys.executable, "-m", "benchmarks.memory", "--count", "200"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = {
        match[1].strip(): int(match[2].replace(",", ""))
        for match in re.finditer(r"^(.+?)\s+([\d,]+) bytes$", done.stdout, re.MULTILINE)
    }
    assert set(figures) == {
        "idle Mutex, a name of its own",
        "idle Mutex, a name already known",
        "idle redis-py Lock",
        "coroutine waiting for a held Mutex",
    }
    assert all(size > 0 for size in figures.values())
    # A waiter holds a lock object of its own, and a task, an acquisition and more.
    assert figures["coroutine waiting for a held Mutex"] > figures["idle Mutex, a name of its own"]


def test_a_count_out_of_bounds_is_refused() -> None:
    command = [sys.executable, "-m", "benchmarks.memory", "--count", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "must be from 1" in done.stderr
