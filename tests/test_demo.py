"""The demo command, run as users run it, against the test server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asynclock._demo import Section, fences_in_order, find_overlaps

pytestmark = pytest.mark.slow


def run_demo(url: str) -> str:
    """Run the demo on ``url`` as users do; return what it printed (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "asynclock", "demo", "--url", url, "--workers", "2",
         "--tasks", "3", "--seconds", "1.5", "--ttl", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overlaps: 0" in result.stdout
    assert "sections" in result.stdout  # progress was shown
    assert "wait p99" in result.stdout
    assert "demo:nightly-report: run 1 time(s)" in result.stdout
    return result.stdout


def test_the_demo_runs_workers_and_finds_no_overlap(redis_url: str) -> None:
    assert "workers (processes)" in run_demo(redis_url)


def test_the_demo_on_postgres(postgres_url: str) -> None:
    assert "workers (processes)" in run_demo(postgres_url)


def test_the_demo_in_memory_says_its_workers_share_one_process() -> None:
    out = run_demo("memory://")
    assert "workers (in this one process)" in out
    assert "exclude nothing across processes" in out


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
