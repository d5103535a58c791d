"""The stores benchmark measures a Mutex on Redis, PostgreSQL and memory."""

from __future__ import annotations

import asyncio

from asynclock import MemoryBackend
from benchmarks.stores import contended, run, table, uncontended


def test_every_store_is_measured_and_reported() -> None:
    figures = run(seconds=0.3, pairs=50)  # on private servers
    assert list(figures) == [
        "Redis (redis-py client)",
        "PostgreSQL (PostgresBackend)",
        "memory (MemoryBackend)",
    ]
    for pairs, sections, p99 in figures.values():
        assert pairs > 0
        assert sections > 0
        assert p99 >= 0
    assert "| memory (MemoryBackend) |" in table(figures)


def test_contended_sections_take_turns_between_coroutines() -> None:
    async def measure() -> tuple[float, float]:
        store = MemoryBackend()
        await uncontended(store, pairs=10, rounds=1)
        return await contended(store, waiters=8, seconds=0.2)

    sections, p99 = asyncio.run(measure())
    assert sections > 0
    assert p99 > 0  # every coroutine waited for the others: they took turns
