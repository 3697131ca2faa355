"""TracingMiddleware, driven through its hooks, spans read from InMemorySpanExporter."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from backrun.context import JobContext
from backrun.errors import JobTimeout
from backrun.jobs import Job, JobState
from backrun.observability import TracingMiddleware
from tests.helpers import wait_until

from .support import claimed, make_ctx, make_job


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracing(provider: TracerProvider) -> TracingMiddleware:
    return TracingMiddleware(tracer_provider=provider)


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def enqueue(mw: TracingMiddleware, job: Job) -> Job:
    return mw.enqueue(job, lambda j: j)


def run_attempt(
    mw: TracingMiddleware, job: Job, state: JobState, error: BaseException | None = None
) -> JobContext:
    """One attempt: process (raising ``error``, if any), then the recorded outcome."""
    ctx = make_ctx(job)

    def handler(c: JobContext) -> None:
        if error is not None:
            raise error

    if error is None:
        mw.process(ctx, handler)
    else:
        with pytest.raises(type(error)) as raised:
            mw.process(ctx, handler)
        assert raised.value is error
    mw.attempt_finished(ctx, job.replace(state=state), error)
    return ctx


def test_enqueue_opens_a_producer_span_and_injects_traceparent(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    job = enqueue(tracing, make_job())

    (send,) = spans(exporter, "send mail")
    assert send.kind is SpanKind.PRODUCER
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "backrun",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "backrun.job.handler": "emails.send",
    }
    assert send.context is not None
    version, trace_id, span_id, flags = job.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 0x01  # sampled
    assert int(trace_id, 16) == send.context.trace_id
    assert int(span_id, 16) == send.context.span_id


def test_enqueue_keeps_existing_headers_and_the_callers_trace(
    tracing: TracingMiddleware, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("app").start_as_current_span("POST /signup") as request:
        job = enqueue(tracing, make_job(headers={"tenant": "acme"}))

    assert job.headers["tenant"] == "acme"
    (send,) = spans(exporter, "send mail")
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id


def test_a_failed_enqueue_is_recorded_on_the_send_span(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    def broken_store(job: Job) -> Job:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        tracing.enqueue(make_job(), broken_store)

    (send,) = spans(exporter, "send mail")
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["error.type"] == "OSError"
    assert [e.name for e in send.events] == ["exception"]


def test_process_span_is_a_consumer_child_of_the_send_span(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    job = claimed(enqueue(tracing, make_job()))
    run_attempt(tracing, job, JobState.SUCCEEDED)

    (send,) = spans(exporter, "send mail")
    (process,) = spans(exporter, "process mail")
    assert process.kind is SpanKind.CONSUMER
    assert send.context is not None
    assert process.context is not None
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "backrun",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "messaging.client.id": "host-1-abcdef12",
        "backrun.job.handler": "emails.send",
        "backrun.job.attempt": 1,
    }
    assert process.status.status_code is StatusCode.UNSET


def test_the_span_ends_when_the_handler_returned_but_only_once_recorded(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    job = claimed(make_job())
    ctx = make_ctx(job)
    tracing.process(ctx, lambda c: None)
    assert spans(exporter, "process mail") == []  # the outcome is not known yet

    tracing.attempt_finished(ctx, job.replace(state=JobState.SUCCEEDED), None)
    (process,) = spans(exporter, "process mail")
    assert process.start_time is not None
    assert process.end_time is not None
    assert process.start_time <= process.end_time


def test_the_handler_runs_with_the_process_span_current(
    tracing: TracingMiddleware, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    job = claimed(enqueue(tracing, make_job()))
    ctx = make_ctx(job)

    def handler(c: JobContext) -> None:
        with provider.get_tracer("app").start_as_current_span("render template"):
            pass

    tracing.process(ctx, handler)
    tracing.attempt_finished(ctx, job.replace(state=JobState.SUCCEEDED), None)

    (process,) = spans(exporter, "process mail")
    (inner,) = spans(exporter, "render template")
    assert process.context is not None
    assert inner.parent is not None
    assert inner.parent.span_id == process.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # context restored


def test_baggage_travels_from_producer_to_handler(tracing: TracingMiddleware) -> None:
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        job = claimed(enqueue(tracing, make_job()))
    finally:
        otel_context.detach(token)
    seen: list[object] = []
    run_attempt_ctx = make_ctx(job)
    tracing.process(run_attempt_ctx, lambda c: seen.append(baggage.get_baggage("tenant")))
    assert seen == ["acme"]


def test_a_retry_shows_as_a_failed_span_then_a_second_attempt_in_the_same_trace(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    job = claimed(enqueue(tracing, make_job()))
    run_attempt(tracing, job, JobState.SCHEDULED, ValueError("smtp down"))
    run_attempt(tracing, claimed(job, attempt=2), JobState.SUCCEEDED)

    first, second = sorted(spans(exporter, "process mail"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["backrun.job.attempt"] == 1
    assert first.attributes["backrun.job.outcome"] == "retried"
    assert first.attributes["error.type"] == "ValueError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: smtp down"
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "smtp down"
    assert second.attributes["backrun.job.attempt"] == 2
    assert "backrun.job.outcome" not in second.attributes  # success: status UNSET says it
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id == second.context.trace_id


def test_a_dead_job_is_marked_dead(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    run_attempt(tracing, claimed(make_job()), JobState.DEAD, KeyError("gone"))
    (process,) = spans(exporter, "process mail")
    assert process.attributes is not None
    assert process.attributes["backrun.job.outcome"] == "dead"
    assert process.attributes["error.type"] == "KeyError"


def test_a_timeout_ends_the_span_while_the_handler_still_runs(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    job = claimed(make_job())
    ctx = make_ctx(job)
    release = threading.Event()
    started = threading.Event()

    def stuck_handler(c: JobContext) -> None:
        started.set()
        release.wait(10)
        raise RuntimeError("finally gave up")

    def slot() -> None:
        with contextlib.suppress(RuntimeError):
            tracing.process(ctx, stuck_handler)

    thread = threading.Thread(target=slot)
    thread.start()
    try:
        assert started.wait(10)
        # The supervisor records the timeout while the handler is still running.
        timeout = JobTimeout("attempt 1 ran past its timeout of 0:00:01")
        tracing.attempt_finished(ctx, job.replace(state=JobState.SCHEDULED), timeout)
        (process,) = spans(exporter, "process mail")
        assert process.status.status_code is StatusCode.ERROR
        assert process.attributes is not None
        assert process.attributes["error.type"] == "backrun.errors.JobTimeout"
        assert process.attributes["backrun.job.timed_out"] is True
        assert process.attributes["backrun.job.outcome"] == "retried"
    finally:
        release.set()
        thread.join(10)
    # The late return changes nothing: no second end, no second exception.
    (process,) = spans(exporter, "process mail")
    assert [e.attributes and e.attributes["exception.type"] for e in process.events] == [
        "backrun.errors.JobTimeout"
    ]


def test_use_links_starts_a_new_trace_linked_to_the_send_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracing = TracingMiddleware(tracer_provider=provider, use_links=True)
    job = claimed(enqueue(tracing, make_job()))
    run_attempt(tracing, job, JobState.SUCCEEDED)

    (send,) = spans(exporter, "send mail")
    (process,) = spans(exporter, "process mail")
    assert send.context is not None
    assert process.context is not None
    assert process.parent is None
    assert process.context.trace_id != send.context.trace_id
    (link,) = process.links
    assert link.context.trace_id == send.context.trace_id
    assert link.context.span_id == send.context.span_id


def test_a_job_without_trace_headers_gets_a_root_span(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    run_attempt(tracing, claimed(make_job()), JobState.SUCCEEDED)
    (process,) = spans(exporter, "process mail")
    assert process.parent is None


def test_worker_stopping_ends_spans_whose_outcome_was_never_recorded(
    tracing: TracingMiddleware, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(claimed(make_job()))
    tracing.process(ctx, lambda c: None)  # then the claim was lost: no attempt_finished
    tracing.worker_stopping(object())
    assert spans(exporter, "process mail") == []  # just returned: its outcome may still come

    monkeypatch.setattr("backrun.observability.tracing._UNRECORDED_AFTER", 0.0)
    tracing.worker_stopping(object())
    (process,) = spans(exporter, "process mail")
    assert process.attributes is not None
    assert process.attributes["backrun.job.outcome"] == "unrecorded"


def test_without_an_sdk_no_span_is_made_and_headers_stay_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if no SDK were configured, whatever another test did to the global.
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    tracing = TracingMiddleware()
    job = make_job(headers={"tenant": "acme"})
    assert enqueue(tracing, job) is job
    seen: list[bool] = []
    tracing.process(make_ctx(claimed(job)), lambda c: seen.append(True))
    assert seen == [True]


def test_without_an_sdk_an_incoming_trace_context_still_travels() -> None:
    tracing = TracingMiddleware(tracer_provider=trace.NoOpTracerProvider())
    incoming = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(incoming)))
    try:
        job = enqueue(tracing, make_job())
    finally:
        otel_context.detach(token)
    assert job.headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    seen: list[int] = []
    tracing.process(
        make_ctx(claimed(job)),
        lambda c: seen.append(trace.get_current_span().get_span_context().trace_id),
    )
    assert seen == [incoming.trace_id]


def test_a_global_provider_set_after_the_middleware_is_used() -> None:
    # Run in a subprocess: the global provider can be set once per process.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from backrun.observability import TracingMiddleware
        from tests.observability.support import make_job

        tracing = TracingMiddleware()
        tracing.enqueue(make_job(), lambda j: j)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        tracing.enqueue(make_job(), lambda j: j)
        print(len(exporter.get_finished_spans()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "1"


def test_a_provider_named_by_the_environment_is_used() -> None:
    # OTEL_PYTHON_TRACER_PROVIDER makes get_tracer_provider() load the SDK's on
    # first use; the enqueue fast path must not skip that lookup.
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from backrun.observability import TracingMiddleware
        from tests.observability.support import make_job

        job = TracingMiddleware().enqueue(make_job(), lambda j: j)
        print(type(trace.get_tracer_provider()).__module__, "traceparent" in job.headers)
        """
    )
    env = dict(os.environ, OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert out.stdout.split() == ["opentelemetry.sdk.trace", "True"]


def test_wait_until_helper_fails_on_deadline() -> None:
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.05, what="never")
