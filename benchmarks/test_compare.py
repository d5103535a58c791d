"""``python -m benchmarks.compare`` end to end, briefly: this tree against itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_comparison_runs_both_trees_and_prints_both_parts() -> None:
    small = ["--iterations", "5", "--rounds", "1", "--waiters", "2", "--seconds", "0.2"]
    command = [sys.executable, "-m", "benchmarks.compare", "--against", str(ROOT), *small]
    done = subprocess.run(
        [*command, "--runs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("this: acquire+release", "base: async with", "redis-py Lock: acquire+release"):
        assert line in out
    assert "run 1 this:" in out
    assert "run 1 base:" in out


def test_a_folder_without_the_package_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.compare", "--against", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no asynclock package" in done.stderr
