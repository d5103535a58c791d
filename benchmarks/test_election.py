"""The election hand-over benchmark runs and reports both figures."""

from __future__ import annotations

from benchmarks.election import run, table


def test_the_election_hand_over_is_measured() -> None:
    figures = run(hand_overs=10)  # on a private server
    assert list(figures) == [
        "resign() to the next leader, median ms",
        "resign() to the next leader, p99 ms",
        "a crashed leader's lease expiry to the next leader, median ms",
    ]
    median, p99, after_crash = figures.values()
    assert 0 < median <= p99
    assert after_crash > -5  # not before the lease ran out (the clocks' drift aside)
    assert "| resign() to the next leader, median ms |" in table(figures)
