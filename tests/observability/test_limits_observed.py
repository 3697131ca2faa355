"""What metrics and traces say about limits: waits counted, limited jobs running, a span event."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

import backrun
from backrun.context import JobContext
from backrun.jobs import JobState
from backrun.limits import note_wait
from backrun.observability import MetricsMiddleware, TracingMiddleware
from tests.helpers import wait_until

from .support import claimed, make_ctx, make_job


def test_a_wait_is_counted_per_handler_and_limit() -> None:
    registry = CollectorRegistry()
    mw = MetricsMiddleware(registry=registry)
    mw.job_waited("a" * 32, "partner.call", "concurrency")
    mw.job_waited("b" * 32, "partner.call", "concurrency")
    mw.job_waited("c" * 32, "partner.call", "rate")
    labels = {"handler": "partner.call"}
    sample = registry.get_sample_value
    assert sample("backrun_limited_total", {**labels, "limit": "concurrency"}) == 2
    assert sample("backrun_limited_total", {**labels, "limit": "rate"}) == 1


def test_a_limited_job_counts_as_running_while_it_runs() -> None:
    registry = CollectorRegistry()
    mw = MetricsMiddleware(registry=registry)
    job = claimed(make_job(limited=True))
    seen: list[float | None] = []

    def handler(ctx: JobContext) -> None:
        seen.append(registry.get_sample_value("backrun_limited_running", {"handler": job.handler}))

    mw.process(make_ctx(job), handler)
    assert seen == [1.0]
    assert registry.get_sample_value("backrun_limited_running", {"handler": job.handler}) == 0
    unlimited = claimed(make_job(handler="other"))
    mw.process(make_ctx(unlimited), lambda ctx: None)
    assert registry.get_sample_value("backrun_limited_running", {"handler": "other"}) is None


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def test_a_job_that_waited_gets_a_span_event(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = TracingMiddleware(tracer_provider=provider)
    job = claimed(make_job(limited=True), wait=3.0)
    assert job.run_at is not None
    note_wait(job.id, "rate", job.run_at + timedelta(seconds=1))
    other = claimed(make_job(limited=True))
    for attempt in (job, other):
        ctx = make_ctx(attempt)
        tracing.process(ctx, lambda ctx: None)
        tracing.attempt_finished(ctx, attempt.replace(state=JobState.SUCCEEDED), None)
    first, second = exporter.get_finished_spans()
    (event,) = first.events
    assert event.name == "backrun.limit_waited"
    assert dict(event.attributes or {}) == {
        "backrun.limit": "rate",
        "backrun.limit.waited_seconds": 2.0,
    }
    assert second.events == ()
    provider.shutdown()


class Call(BaseModel):
    n: int


def test_a_worker_reports_each_waiting_job_once_to_the_middleware() -> None:
    waited: list[tuple[str, str, str]] = []

    class Listen(backrun.Middleware):
        def job_waited(self, job_id: str, handler: str, limit: str) -> None:
            waited.append((job_id, handler, limit))

    engine = backrun.Engine(backrun.MemoryStorage(), threads=3, middleware=[Listen()])
    release = threading.Event()

    @engine.handler(name="partner.call", max_concurrency=1)
    def call(payload: Call) -> None:
        release.wait(10)

    jobs = [engine.enqueue("partner.call", Call(n=i)) for i in range(3)]
    with engine.running():
        wait_until(lambda: len({w[0] for w in waited}) == 2, what="two jobs reported waiting")
        release.set()
        wait_until(
            lambda: all(engine.get(j.id).state is JobState.SUCCEEDED for j in jobs),  # type: ignore[union-attr]
            what="every job to finish",
        )
    assert len(waited) == len({w[0] for w in waited})  # once per job
    assert {w[1:] for w in waited} == {("partner.call", "concurrency")}
