"""MetricsMiddleware, driven through its hooks, read from a fresh CollectorRegistry."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from backrun.context import JobContext
from backrun.errors import JobTimeout
from backrun.jobs import Job, JobState
from backrun.observability import DEFAULT_BUCKETS, MetricsMiddleware, default_middleware

from .support import claimed, make_ctx, make_job

LABELS = {"queue": "mail", "handler": "emails.send"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def mw(registry: CollectorRegistry) -> MetricsMiddleware:
    return MetricsMiddleware(registry=registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def completed(registry: CollectorRegistry, outcome: str) -> float | None:
    return value(registry, "backrun_jobs_completed_total", outcome=outcome)


def run_attempt(
    mw: MetricsMiddleware, job: Job, state: JobState, error: BaseException | None = None
) -> None:
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


def test_enqueue_counts_by_queue_and_handler(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    for _ in range(3):
        mw.enqueue(make_job(), lambda j: j)
    mw.enqueue(make_job(queue="other"), lambda j: j)
    assert value(registry, "backrun_jobs_enqueued_total") == 3
    assert value(registry, "backrun_jobs_enqueued_total", queue="other") == 1


def test_a_failed_enqueue_is_not_counted(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    def broken(job: Job) -> Job:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        mw.enqueue(make_job(), broken)
    assert value(registry, "backrun_jobs_enqueued_total") is None


@pytest.mark.parametrize(
    ("state", "error", "counted"),
    [
        (JobState.SUCCEEDED, None, {"succeeded"}),
        (JobState.SCHEDULED, ValueError("x"), {"retried", "failed"}),
        (JobState.DEAD, ValueError("x"), {"dead", "failed"}),
        (JobState.CANCELLED, None, {"cancelled"}),
        (JobState.QUEUED, None, set()),  # released at shutdown: it will run again
    ],
)
def test_each_outcome_is_counted(
    mw: MetricsMiddleware,
    registry: CollectorRegistry,
    state: JobState,
    error: BaseException | None,
    counted: set[str],
) -> None:
    run_attempt(mw, claimed(make_job()), state, error)
    for outcome in ("succeeded", "failed", "retried", "dead", "cancelled"):
        assert completed(registry, outcome) == (1 if outcome in counted else 0), outcome
    observed = value(registry, "backrun_job_duration_seconds_count")
    assert observed == (0 if state is JobState.QUEUED else 1)


def test_every_series_of_a_label_pair_starts_at_zero(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    mw.enqueue(make_job(), lambda j: j)
    for outcome in ("succeeded", "failed", "retried", "dead", "cancelled"):
        assert completed(registry, outcome) == 0
    assert value(registry, "backrun_orphans_recovered_total") == 0
    assert value(registry, "backrun_stuck_threads") == 0
    assert value(registry, "backrun_jobs_running") == 0
    assert value(registry, "backrun_job_duration_seconds_count") == 0
    assert value(registry, "backrun_job_queue_wait_seconds_count") == 0


def test_queue_wait_is_due_time_to_start(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    run_attempt(mw, claimed(make_job(), wait=2.5), JobState.SUCCEEDED)
    assert value(registry, "backrun_job_queue_wait_seconds_sum") == pytest.approx(2.5)
    assert value(registry, "backrun_job_queue_wait_seconds_bucket", le="2.5") == 1
    assert value(registry, "backrun_job_queue_wait_seconds_bucket", le="1.0") == 0


def test_a_job_started_before_its_due_time_waited_zero(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    run_attempt(mw, claimed(make_job(), wait=-1.0), JobState.SUCCEEDED)
    assert value(registry, "backrun_job_queue_wait_seconds_sum") == 0


def test_duration_histogram_spans_5ms_to_30min(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    assert DEFAULT_BUCKETS[0] == 0.005
    assert DEFAULT_BUCKETS[-1] == 1800.0
    run_attempt(mw, claimed(make_job()), JobState.SUCCEEDED)
    assert value(registry, "backrun_job_duration_seconds_bucket", le="0.005") is not None
    assert value(registry, "backrun_job_duration_seconds_bucket", le="1800.0") == 1
    assert value(registry, "backrun_job_duration_seconds_bucket", le="+Inf") == 1


def test_custom_buckets(registry: CollectorRegistry) -> None:
    mw = MetricsMiddleware(registry=registry, buckets=(0.1, 1.0))
    run_attempt(mw, claimed(make_job()), JobState.SUCCEEDED)
    assert value(registry, "backrun_job_duration_seconds_bucket", le="0.1") == 1
    assert value(registry, "backrun_job_duration_seconds_bucket", le="0.005") is None


def test_running_gauge_while_the_handler_runs(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    job = claimed(make_job())
    ctx = make_ctx(job)
    during: list[float | None] = []
    mw.process(ctx, lambda c: during.append(value(registry, "backrun_jobs_running")))
    mw.attempt_finished(ctx, job.replace(state=JobState.SUCCEEDED), None)
    assert during == [1]
    assert value(registry, "backrun_jobs_running") == 0


def test_a_timed_out_handler_is_a_stuck_thread_until_it_returns(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    job = claimed(make_job())
    ctx = make_ctx(job)
    started, release = threading.Event(), threading.Event()

    def stuck(c: JobContext) -> None:
        started.set()
        release.wait(10)

    thread = threading.Thread(target=mw.process, args=(ctx, stuck))
    thread.start()
    try:
        assert started.wait(10)
        mw.attempt_finished(ctx, job.replace(state=JobState.SCHEDULED), JobTimeout("late"))
        assert value(registry, "backrun_stuck_threads") == 1
        assert value(registry, "backrun_jobs_running") == 1
        assert completed(registry, "retried") == 1
        assert completed(registry, "failed") == 1
        assert value(registry, "backrun_job_duration_seconds_count") == 1
    finally:
        release.set()
        thread.join(10)
    assert value(registry, "backrun_stuck_threads") == 0
    assert value(registry, "backrun_jobs_running") == 0
    assert value(registry, "backrun_job_duration_seconds_count") == 1


def test_a_timeout_after_the_handler_returned_is_no_stuck_thread(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    run_attempt(mw, claimed(make_job()), JobState.DEAD, JobTimeout("late"))
    assert value(registry, "backrun_stuck_threads") == 0


@pytest.mark.parametrize(
    ("state", "counted"),
    [
        (JobState.QUEUED, set()),
        (JobState.DEAD, {"dead", "failed"}),
        (JobState.CANCELLED, {"cancelled"}),
    ],
)
def test_orphan_rescues_are_counted(
    mw: MetricsMiddleware, registry: CollectorRegistry, state: JobState, counted: set[str]
) -> None:
    mw.orphan_recovered(make_job(state=state))
    assert value(registry, "backrun_orphans_recovered_total") == 1
    for outcome in ("succeeded", "failed", "retried", "dead", "cancelled"):
        assert completed(registry, outcome) == (1 if outcome in counted else 0), outcome


def test_an_attempt_recorded_without_process_still_counts(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    job = claimed(make_job())
    mw.attempt_finished(make_ctx(job), job.replace(state=JobState.DEAD), ValueError("x"))
    assert completed(registry, "dead") == 1
    assert value(registry, "backrun_job_duration_seconds_count") == 0


def test_labels_are_queue_handler_outcome_only(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    run_attempt(mw, claimed(mw.enqueue(make_job(), lambda j: j)), JobState.SUCCEEDED)
    names = set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            assert {"queue", "handler"} <= set(sample.labels), sample
            assert set(sample.labels) <= {"queue", "handler", "outcome", "le"}, sample
            assert "job" not in sample.labels
            assert "instance" not in sample.labels
    assert {
        "backrun_jobs_enqueued_total",
        "backrun_jobs_completed_total",
        "backrun_job_duration_seconds_bucket",
        "backrun_job_queue_wait_seconds_bucket",
        "backrun_jobs_running",
        "backrun_orphans_recovered_total",
        "backrun_stuck_threads",
    } <= names


def test_help_text_says_what_failed_means(registry: CollectorRegistry) -> None:
    MetricsMiddleware(registry=registry)
    (family,) = [f for f in registry.collect() if f.name == "backrun_jobs_completed"]
    assert "failed, counting every failed attempt (= retried + dead)" in family.documentation


def test_two_middlewares_on_one_registry_share_the_metrics(registry: CollectorRegistry) -> None:
    first, second = MetricsMiddleware(registry=registry), MetricsMiddleware(registry=registry)
    first.enqueue(make_job(), lambda j: j)
    second.enqueue(make_job(), lambda j: j)
    assert value(registry, "backrun_jobs_enqueued_total") == 2


def test_separate_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    MetricsMiddleware(registry=a).enqueue(make_job(), lambda j: j)
    MetricsMiddleware(registry=b)
    assert a.get_sample_value("backrun_jobs_enqueued_total", LABELS) == 1
    assert b.get_sample_value("backrun_jobs_enqueued_total", LABELS) is None


def test_other_buckets_on_a_used_registry_are_refused(registry: CollectorRegistry) -> None:
    MetricsMiddleware(registry=registry)
    with pytest.raises(ValueError, match="other buckets"):
        MetricsMiddleware(registry=registry, buckets=(1.0, 2.0))


def test_default_middleware_is_fresh_each_time_and_shares_the_global_registry() -> None:
    first, second = default_middleware(), default_middleware()
    assert [type(m).__name__ for m in first] == [
        "TracingMiddleware",
        "MetricsMiddleware",
        "OtelMetricsMiddleware",
    ]
    assert all(a is not b for a, b in zip(first, second, strict=True))


def test_importing_registers_nothing() -> None:
    code = (
        "from prometheus_client import REGISTRY\n"
        "before = set(REGISTRY._names_to_collectors)\n"
        "import threading, backrun, backrun.observability\n"
        "from backrun.observability import metrics, tracing, otel_metrics, otlp\n"
        "from opentelemetry import trace\n"
        "assert set(REGISTRY._names_to_collectors) == before, 'registered at import'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_the_wait_uses_the_jobs_own_times_not_the_wall_clock(
    mw: MetricsMiddleware, registry: CollectorRegistry
) -> None:
    job = claimed(make_job(), wait=0)
    job = job.replace(started_at=job.run_at and job.run_at + timedelta(hours=1))
    run_attempt(mw, job, JobState.SUCCEEDED)
    assert value(registry, "backrun_job_queue_wait_seconds_sum") == 3600
