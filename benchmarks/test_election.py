"""The election hand-over benchmark runs and reports both figures."""

from __future__ import annotations

from benchmarks.election import run, table


def test_the_election_hand_over_is_measured() -> None:
    figures = run(hand_overs=10)  # on a private server
    assert list(figures) == [
        "resign() to the next leader, median ms",
        "resign() to the next leader, p99 ms",
    ]
    median, p99 = figures.values()
    assert 0 < median <= p99
    assert "| resign() to the next leader, median ms |" in table(figures)
