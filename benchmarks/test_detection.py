"""The detection-time scenarios run, quickly, as a check that they still work."""

from __future__ import annotations

import asyncio

from asynclock._server import RedisServer
from benchmarks.detection import run


def test_every_detection_scenario_runs() -> None:
    ttl = 0.3
    with RedisServer() as server:
        results = asyncio.run(run(server, ttl, repeats=1))
    times = dict((label, values[0]) for label, values in results)
    assert times["key deleted"] < ttl / 3 + 0.2
    assert times["server stalled (after the deadline)"] < 0.2
    assert ttl * 0.5 < times["holder killed"] < ttl + 0.5
