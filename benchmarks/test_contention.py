"""The contention scenarios run, briefly: no overlaps, and asynclock hands over."""

from __future__ import annotations

import asyncio

from asynclock._server import RedisServer
from benchmarks.contention import run


def test_contention_scenarios_run_without_overlap() -> None:
    with RedisServer() as server:
        rows, problems = asyncio.run(run(server.url, [4], 0.5))
    assert problems == []
    assert len(rows) == 5
    assert all(row.overlaps == 0 for row in rows)
    ours = next(row for row in rows if row.implementation == "asynclock Mutex")
    assert ours.handoffs > 0.9  # waiters of one process are served in order
