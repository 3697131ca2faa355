"""Metric updates queued off the hot path: exact at collection, bounded in delay without one."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter

from backrun.jobs import JobState
from backrun.observability import MetricsMiddleware
from backrun.observability._pending import PendingUpdates
from tests.helpers import wait_until

from .support import claimed, make_ctx, make_job

LABELS = {"queue": "mail", "handler": "emails.send"}


def _raw(counter: Counter) -> float:
    """The counter's stored value, read without collecting the registry (no flush)."""
    return float(counter._value.get())  # type: ignore[attr-defined]


def test_updates_from_many_threads_are_all_seen_by_a_collection() -> None:
    registry = CollectorRegistry()
    mw = MetricsMiddleware(registry=registry)
    job = claimed(make_job())

    def finish_many() -> None:
        for _ in range(500):
            ctx = make_ctx(job)
            mw.process(ctx, lambda c: None)
            mw.attempt_finished(ctx, job.replace(state=JobState.SUCCEEDED), None)

    threads = [threading.Thread(target=finish_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    labels = {**LABELS, "outcome": "succeeded"}
    assert registry.get_sample_value("backrun_jobs_completed_total", labels) == 2000
    assert registry.get_sample_value("backrun_job_duration_seconds_count", LABELS) == 2000
    assert registry.get_sample_value("backrun_job_queue_wait_seconds_count", LABELS) == 2000
    assert registry.get_sample_value("backrun_jobs_running", LABELS) == 0


def test_a_queued_update_waits_for_a_collection_then_is_applied_first() -> None:
    registry = CollectorRegistry()
    pending = PendingUpdates(registry, max_pending=10_000)
    counter = Counter("c", "c", registry=registry)
    pending.add(counter.inc, 2.0)
    pending.add(counter.inc, 3.0)
    assert registry.get_sample_value("c_total") == 5.0


def test_a_full_queue_is_applied_by_the_thread_that_fills_it() -> None:
    registry = CollectorRegistry()
    pending = PendingUpdates(registry, max_pending=3)
    counter = Counter("c", "c", registry=registry)
    pending.add(counter.inc)
    pending.add(counter.inc)
    pending.add(counter.inc)
    assert _raw(counter) >= 3.0  # the flusher thread may have applied some first


def test_without_a_collection_updates_reach_the_metric_within_the_flush_interval() -> None:
    # Multiprocess mode: another process reads the values, nothing collects here.
    registry = CollectorRegistry()
    pending = PendingUpdates(registry, max_pending=10_000)
    counter = Counter("c", "c", registry=registry)
    pending.add(counter.inc, 7.0)
    wait_until(lambda: _raw(counter) == 7.0, timeout=5.0, what="the flusher to apply it")
