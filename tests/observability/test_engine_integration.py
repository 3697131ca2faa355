"""Tracing and metrics through a real engine and worker threads, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import tenacity
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

import backrun
from backrun.observability import MetricsMiddleware, TracingMiddleware
from tests.helpers import wait_until


class Work(BaseModel):
    n: int = 0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def test_successes_retries_timeouts_and_dead_jobs(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    engine = backrun.Engine(
        backrun.MemoryStorage(),
        middleware=[TracingMiddleware(provider), MetricsMiddleware(registry=registry)],
        retry=backrun.RetryPolicy(max_retries=1, wait=tenacity.wait_fixed(0.01)),
        shutdown_timeout=2.0,
        recovery_interval=0.05,  # the supervisor enforces deadlines on its rounds
    )
    release = threading.Event()

    @engine.handler(name="ok")
    def ok(payload: Work) -> None:
        return None

    @engine.handler(name="flaky")
    def flaky(payload: Work, ctx: backrun.JobContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")

    @engine.handler(
        name="stuck",
        retry=backrun.RetryPolicy(max_retries=0, timeout=timedelta(milliseconds=100)),
    )
    def stuck(payload: Work) -> None:
        release.wait(30)

    def value(name: str, handler: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": "default", "handler": handler, **labels})

    def completed(handler: str, outcome: str) -> float | None:
        return value("backrun_jobs_completed_total", handler, outcome=outcome)

    try:
        with engine.running():
            jobs = [engine.enqueue(name, Work()) for name in ("ok", "flaky", "stuck")]

            def all_finished() -> bool:
                return all((j := engine.get(job.id)) is not None and j.finished for job in jobs)

            wait_until(all_finished, what="every job to finish")
            wait_until(lambda: completed("stuck", "dead") == 1, what="the timeout to be counted")
            assert value("backrun_stuck_threads", "stuck") == 1
            assert value("backrun_jobs_running", "stuck") == 1
            release.set()
            wait_until(lambda: value("backrun_stuck_threads", "stuck") == 0, what="unstuck")
    finally:
        release.set()
        engine.close()

    assert completed("ok", "succeeded") == 1
    assert completed("flaky", "retried") == 1
    assert completed("flaky", "succeeded") == 1
    assert completed("flaky", "failed") == 1
    assert completed("stuck", "dead") == 1
    assert completed("stuck", "failed") == 1
    assert value("backrun_job_duration_seconds_count", "flaky") == 2
    assert value("backrun_jobs_enqueued_total", "ok") == 1
    assert value("backrun_jobs_running", "stuck") == 0

    def of(job: backrun.Job, name: str) -> list[ReadableSpan]:
        found = [
            s
            for s in exporter.get_finished_spans()
            if s.name == name and s.attributes and s.attributes["messaging.message.id"] == job.id
        ]
        return sorted(found, key=lambda s: s.start_time or 0)

    ok_job, flaky_job, stuck_job = jobs
    for job, attempts in ((ok_job, 1), (flaky_job, 2), (stuck_job, 1)):
        (send,) = of(job, "send default")
        processes = of(job, "process default")
        assert len(processes) == attempts
        for process in processes:
            assert process.context is not None
            assert send.context is not None
            assert process.context.trace_id == send.context.trace_id
            assert process.parent is not None
            assert process.parent.span_id == send.context.span_id
    first, second = of(flaky_job, "process default")
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    (timed_out,) = of(stuck_job, "process default")
    assert timed_out.attributes is not None
    assert timed_out.attributes["error.type"] == "backrun.errors.JobTimeout"
    assert timed_out.attributes["backrun.job.outcome"] == "dead"
    assert timed_out.end_time is not None
    assert timed_out.start_time is not None
    assert timed_out.end_time - timed_out.start_time < 5e9  # ended at the timeout
