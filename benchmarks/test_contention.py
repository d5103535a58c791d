"""The contention scenarios run, briefly: no overlaps, and asynclock hands over."""

from __future__ import annotations

import asyncio

from asynclock._server import RedisServer
from benchmarks.contention import IMPLEMENTATIONS, OURS, Scenario, run, run_uncontended

SMALL = [
    Scenario("4", "4 coroutines, 1 name", 1, 4, 1),
    Scenario("2x2", "2 processes x 2 coroutines, 1 name", 2, 2, 1),
    Scenario("names", "20 coroutines, 50 names", 1, 20, 50),
]


def test_contention_scenarios_run_without_overlap() -> None:
    lines: list[str] = []
    with RedisServer() as server:
        rows, problems = asyncio.run(run(server.url, SMALL, 0.5, progress=lines.append))
        uncontended, more_problems = asyncio.run(run_uncontended(server.url))
    assert problems == [] and more_problems == []
    assert len(rows) == len(SMALL) * len(IMPLEMENTATIONS)
    assert all(row.overlaps == 0 and row.sections_per_second > 0 for row in rows)
    assert len(lines) == 2 * len(rows)  # a line before and after each measurement
    ours = {row.scenario: row for row in rows if row.implementation == OURS}
    # Waiters of one process are served in order: the lock changes hands each time.
    assert ours["4 coroutines, 1 name"].handoffs > 0.9
    # Waking by notification, not polling: no more commands than without contention.
    assert ours["4 coroutines, 1 name"].commands_per_section < 1.5 * uncontended[OURS]
    assert set(uncontended) == set(IMPLEMENTATIONS)
