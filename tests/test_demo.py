"""The demo command, run as users run it, against the test server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asynclock._demo import Section, fences_in_order, find_overlaps

pytestmark = pytest.mark.slow


def test_the_demo_runs_workers_and_finds_no_overlap(redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asynclock", "demo", "--url", redis_url, "--workers", "2",
         "--tasks", "3", "--seconds", "1.5", "--ttl", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overlaps: 0" in result.stdout
    assert "sections" in result.stdout  # progress was shown
    assert "wait p99" in result.stdout


def test_the_demo_checker_sees_overlaps_and_disorder() -> None:
    a = Section(0, "n", 0.0, 0.0, 2.0, 5)
    b = Section(1, "n", 0.0, 1.0, 3.0, 6)
    c = Section(1, "n", 0.0, 3.0, 4.0, 4)
    assert find_overlaps([a, b]) == 1
    assert find_overlaps([a, c]) == 0
    assert not fences_in_order([a, c])
    assert fences_in_order([a, b])


def test_the_command_line_refuses_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asynclock", "demo", "--workers", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--workers must be at least 1" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "asynclock", "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
