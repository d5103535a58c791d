"""Contended hand-off under pytest-benchmark, and the report's scenarios run briefly.

``pytest benchmarks/`` times ``test_contended_handoff`` per implementation (the time
is per round of 160 sections); the other test checks that every scenario of
``python -m benchmarks`` runs without overlap. Only correctness is asserted.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from asynclock._server import LocalCluster, RedisServer
from benchmarks import contention
from benchmarks.contention import (
    IMPLEMENTATIONS,
    ON_CLUSTER,
    OURS,
    Acquire,
    Release,
    Scenario,
    Section,
    overlaps,
    run,
    run_uncontended,
    work,
)
from benchmarks.test_uncontended import Benchmark

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
    assert problems == []
    assert more_problems == []
    assert len(rows) == len(SMALL) * len(IMPLEMENTATIONS)
    assert all(row.overlaps == 0 and row.sections_per_second > 0 for row in rows)
    assert len(lines) == 2 * len(rows)  # a line before and after each measurement
    ours = {row.scenario: row for row in rows if row.implementation == OURS}
    # Waiters of one process are served in order: the lock changes hands each time.
    assert ours["4 coroutines, 1 name"].handoffs > 0.9
    # Waking by notification, not polling: no more commands than without contention.
    assert ours["4 coroutines, 1 name"].commands_per_section < 1.5 * uncontended[OURS]
    assert set(uncontended) == set(IMPLEMENTATIONS)


CLUSTER_SMALL = [
    Scenario("c4", "Cluster: 4 coroutines, 1 name", 1, 4, 1, cluster=True),
    Scenario("c2x2", "Cluster: 2 processes x 2 coroutines, 1 name", 2, 2, 1, cluster=True),
    Scenario("cnames", "Cluster: 20 coroutines, 50 names", 1, 20, 50, cluster=True),
]


def test_cluster_scenarios_run_without_overlap_and_skip_without_a_cluster() -> None:
    with RedisServer() as server, LocalCluster() as cluster:
        rows, problems = asyncio.run(
            run(server.url, CLUSTER_SMALL, 0.5, progress=lambda _: None, cluster_url=cluster.url)
        )
        assert problems == []
        assert {(row.scenario, row.implementation) for row in rows} == {
            (scenario.label, label) for scenario in CLUSTER_SMALL for label in ON_CLUSTER
        }
        assert all(row.overlaps == 0 and row.sections_per_second > 0 for row in rows)
        # Commands counted on every primary: a section runs at least its two scripts.
        assert all(row.commands_per_section >= 2 for row in rows)
        rows, problems = asyncio.run(run(server.url, CLUSTER_SMALL, 0.5, progress=print))
    assert rows == []
    assert problems == ["the Redis Cluster scenarios: skipped, no cluster to run them on"]


#: The contended pytest-benchmark round: 16 coroutines x 10 sections on one name.
ROUND = Scenario("16", "16 coroutines, 1 name", 1, 16, 1)
SECTIONS_EACH = 10
ROUND_TIME_LIMIT = 60.0


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The URL of a private server on 127.0.0.1, started for this module."""
    with RedisServer() as server:
        yield server.url


@pytest.mark.parametrize("label", list(IMPLEMENTATIONS))
def test_contended_handoff(benchmark: Benchmark, server_url: str, label: str) -> None:
    """One round: 16 coroutines take one lock 10 times each; the time is per round."""
    rounds: list[list[Section]] = []

    def one_round() -> None:
        tag = f"bench:{secrets.token_hex(3)}"
        started = time.monotonic()
        rounds.append(
            asyncio.run(
                work(server_url, label, ROUND, tag, 0, started, ROUND_TIME_LIMIT, SECTIONS_EACH)
            )
        )

    benchmark.extra_info["sections_per_round"] = ROUND.workers * SECTIONS_EACH
    benchmark.pedantic(one_round, rounds=3, warmup_rounds=1, iterations=1)
    for sections in rounds:
        assert len(sections) == ROUND.workers * SECTIONS_EACH
        assert overlaps(sections) == 0


def test_a_peer_missing_hanging_or_failing_is_reported_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(client: object, worker: int) -> Acquire:
        raise ImportError("no module named 'nope'", name="nope")

    def hanging(client: object, worker: int) -> Acquire:
        async def acquire(name: str) -> Release:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        return acquire

    def failing(client: object, worker: int) -> Acquire:
        raise RuntimeError("broken peer")

    peers = {"missing": missing, "hanging": hanging, "failing": failing}
    monkeypatch.setattr(contention, "IMPLEMENTATIONS", peers)
    monkeypatch.setattr(contention, "GRACE", 0.5)
    with RedisServer() as server:
        rows, problems = asyncio.run(run(server.url, SMALL[:1], 0.2, progress=lambda _: None))
    assert rows == []
    assert problems == [
        "missing: not installed (nope); pip install '.[bench]'",
        "hanging, 4 coroutines, 1 name: hung (no end within 0 s of the scenario's end)",
        "failing, 4 coroutines, 1 name: failed: RuntimeError('broken peer')",
    ]
