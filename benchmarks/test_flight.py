"""The single-flight benchmark runs, and its job runs once per flight."""

from __future__ import annotations

from benchmarks.flight import run, table


def test_the_single_flight_is_measured() -> None:
    figures = run(flights=3)  # on a private server
    assert list(figures) == [
        "job runs per flight",
        "job's end to a caller's value, median ms",
        "job's end to a caller's value, p99 ms",
    ]
    runs, median, p99 = figures.values()
    assert runs == 1.0
    assert 0 < median <= p99
    assert "| job runs per flight | 1.00 |" in table(figures)
