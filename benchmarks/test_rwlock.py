"""The read-write lock benchmark runs and reports both locks at both mixes."""

from __future__ import annotations

from benchmarks.rwlock import run, table


def test_the_read_write_mixes_are_measured() -> None:
    figures = run(seconds=0.3)  # on a private server
    assert list(figures) == [
        "read-heavy (95% reads), ReadWriteLock",
        "read-heavy (95% reads), Mutex",
        "write-heavy (50% reads), ReadWriteLock",
        "write-heavy (50% reads), Mutex",
    ]
    assert all(rate > 0 for rate in figures.values())
    assert "| read-heavy (95% reads), Mutex |" in table(figures)
