"""OpenTelemetry metrics and spans, read back with the SDK's in-memory reader and exporter."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asynclock import LockEvent, LockLost, Mutex, Semaphore, locked, subscribe
from asynclock._server import RedisServer
from asynclock.otel import Instrumentation, instrument

from .test_readme import run_example


class Telemetry:
    """An instrumentation whose metrics and spans the test reads back."""

    def __init__(self, lock_names: bool = True) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.instrumentation: Instrumentation = instrument(
            self.meters, self.tracers, lock_names=lock_names
        )

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` so far, one per set of attributes."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for recorded in scope.metrics:
                    if recorded.name == metric:
                        found.extend(recorded.data.data_points)
        return found

    def total(self, metric: str, **attributes: str) -> float:
        """The sum (counters) or count (histograms) of ``metric``'s matching points."""
        total = 0.0
        for point in self.points(metric):
            if all(point.attributes.get(f"asynclock.lock.{k}") == v for k, v in attributes.items()):
                total += getattr(point, "count", None) or getattr(point, "value", 0)
        return total

    def spans(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [span for span in self.exporter.get_finished_spans() if span.name == name]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Metrics and spans of this test only."""
    recorded = Telemetry()
    yield recorded
    recorded.instrumentation.uninstrument()


async def test_an_acquire_and_release_record_wait_hold_and_a_span_in_the_trace(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    with telemetry.tracers.get_tracer("app").start_as_current_span("request") as request:
        async with Mutex(client, "jobs:report", ttl=5) as lease:
            await asyncio.sleep(0.05)
    assert telemetry.total("asynclock.lock.wait_time", outcome="acquired", name="jobs:report") == 1
    [hold] = telemetry.points("asynclock.lock.hold_time")
    assert hold.count == 1
    assert 0.05 <= hold.sum < 1
    assert hold.attributes == {
        "asynclock.lock.primitive": "mutex",
        "asynclock.lock.name": "jobs:report",
    }
    [span] = telemetry.spans("asynclock acquire")
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id  # inside the request
    assert span.attributes is not None
    assert span.attributes["asynclock.lock.fencing_token"] == lease.fencing_token
    assert span.attributes["asynclock.lock.outcome"] == "acquired"
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time
    assert sum(p.value for p in telemetry.points("asynclock.lock.pending_requests")) == 0


async def test_outcomes_hand_overs_and_pending_requests(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    holder = Mutex(client, "x", ttl=5)
    assert await holder.acquire()
    assert not await Mutex(client, "x").acquire(blocking=False)
    assert not await Mutex(client, "x").acquire(timeout=0.1)
    waiters = [asyncio.create_task(Mutex(client, "x", ttl=5).acquire()) for _ in range(3)]
    await asyncio.sleep(0.2)
    # Three waiting, and the holder's own acquire is over.
    assert sum(p.value for p in telemetry.points("asynclock.lock.pending_requests")) == 3
    cancelled = waiters.pop()
    cancelled.cancel()
    await holder.release()  # handed over to a waiter of this process
    await asyncio.wait_for(waiters[0], 5)
    assert telemetry.total("asynclock.lock.wait_time", outcome="skipped") == 1
    assert telemetry.total("asynclock.lock.wait_time", outcome="timeout") == 1
    assert telemetry.total("asynclock.lock.wait_time", outcome="cancelled") == 1
    assert telemetry.total("asynclock.lock.hand_overs") == 1
    # One still waits, for a lock nobody will release within the test.
    assert sum(p.value for p in telemetry.points("asynclock.lock.pending_requests")) == 1
    waiters[1].cancel()
    await asyncio.gather(waiters[1], return_exceptions=True)
    assert sum(p.value for p in telemetry.points("asynclock.lock.pending_requests")) == 0
    timed_out = [
        s for s in telemetry.spans("asynclock acquire")
        if s.attributes and s.attributes["asynclock.lock.outcome"] == "timeout"
    ]  # fmt: skip
    [span] = timed_out
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time - span.start_time >= 100_000_000  # the whole wait, in ns


async def test_a_decorated_call_is_labelled_by_its_template(
    client: redis.Redis, telemetry: Telemetry
) -> None:
    @locked("report:{user_id}", client=client, ttl=5)
    async def report(user_id: int) -> None:
        await asyncio.sleep(0.01)

    for user_id in range(5):
        await report(user_id)
    names = {
        p.attributes["asynclock.lock.name"] for p in telemetry.points("asynclock.lock.wait_time")
    }
    assert names == {"report:{user_id}"}  # five names, one label
    tasks = telemetry.spans("asynclock task")
    assert len(tasks) == 5
    assert {s.attributes and s.attributes["asynclock.task.outcome"] for s in tasks} == {"succeeded"}


async def test_names_can_be_left_out(client: redis.Redis) -> None:
    telemetry = Telemetry(lock_names=False)
    try:
        async with Semaphore(client, "api:quota", limit=2, ttl=5):
            pass
    finally:
        telemetry.instrumentation.uninstrument()
    for metric in ("asynclock.lock.wait_time", "asynclock.lock.hold_time"):
        for point in telemetry.points(metric):
            assert "asynclock.lock.name" not in point.attributes
            assert point.attributes["asynclock.lock.primitive"] == "semaphore"
    [span] = telemetry.spans("asynclock acquire")
    assert span.attributes is not None
    assert "asynclock.lock.name" not in span.attributes


async def test_failed_extensions_and_losses_are_counted(telemetry: Telemetry) -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.1)
        admin = redis.Redis.from_url(server.url)
        try:
            with pytest.raises(LockLost):
                async with Mutex(client, "job", ttl=0.6):
                    await admin.client_pause(2000, all=False)  # writes stall: no extension
                    await asyncio.sleep(5)
            await admin.client_unpause()
        finally:
            await client.aclose()
            await admin.aclose()
    assert telemetry.total("asynclock.lock.extend_failures", name="job") >= 1
    assert telemetry.total("asynclock.lock.lost", name="job") == 1
    assert telemetry.total("asynclock.lock.hold_time", name="job") == 1  # ended by the loss


async def test_an_error_marks_the_acquire_span(telemetry: Telemetry) -> None:
    from asynclock._server import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry_on_error=[])
    try:
        with pytest.raises(Exception, match="acquire"):
            await Mutex(client, "job").acquire()
    finally:
        await client.aclose()
    assert telemetry.total("asynclock.lock.wait_time", outcome="error") == 1
    [span] = telemetry.spans("asynclock acquire")
    assert span.status.is_ok is False
    assert span.events
    assert span.events[0].name == "exception"


async def test_instrument_again_replaces_and_bad_options_are_refused(
    client: redis.Redis,
) -> None:
    first = Telemetry()
    second = Telemetry()
    try:
        async with Mutex(client, "job", ttl=5):
            pass
        assert first.points("asynclock.lock.wait_time") == []  # replaced: records nothing
        assert second.total("asynclock.lock.wait_time") == 1
        with pytest.raises(TypeError, match="lock_names"):
            instrument(lock_names="no")  # type: ignore[arg-type]
    finally:
        second.instrumentation.uninstrument()


def test_the_readme_prometheus_sample_is_what_the_example_prints(redis_url: str) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [example] = [
        code for code in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        if "PrometheusMetricReader" in code
    ]  # fmt: skip
    sample = re.search(r"which prints \(the buckets left out\):\n\n```\n(.*?)```", readme, re.S)
    assert sample
    printed = run_example(example, redis_url).strip().splitlines()
    shown = sample.group(1).strip().splitlines()
    # Series and labels as shown; the values are this run's.
    assert [line.rsplit(" ", 1)[0] for line in printed] == [
        line.rsplit(" ", 1)[0] for line in shown
    ]
    assert all(float(line.rsplit(" ", 1)[1]) >= 0 for line in printed)


async def test_an_acquire_whose_grant_came_too_late_is_counted_down(
    client: redis.Redis, make_client: Any, telemetry: Telemetry
) -> None:
    # The server freezes while the acquire is on its way: its grant arrives after the
    # lease would have run out, is given back, and the acquire goes on under a new
    # token. It still ends as one pending request, counted down once.
    other = make_client()
    seen: list[LockEvent] = []
    stop = subscribe(seen.append)
    freeze = asyncio.create_task(other.execute_command("DEBUG", "SLEEP", "0.3"))
    await asyncio.sleep(0.05)
    lock = Mutex(client, "late", ttl=0.1)
    try:
        assert await lock.acquire(timeout=5)
    finally:
        stop()
    await freeze
    await lock.release()
    tokens = {e.event: e.token for e in seen if e.event in {"lock_requested", "lock_acquired"}}
    assert tokens["lock_requested"] != tokens["lock_acquired"]  # the grant came too late
    assert sum(p.value for p in telemetry.points("asynclock.lock.pending_requests")) == 0
