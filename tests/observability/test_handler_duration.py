"""The job log and the duration histogram time the handler alone (issue 10, item 11).

A store whose outcome write is slow (a retried write on a full disk) must not
make a 0 ms handler look slow.
"""

from __future__ import annotations

import logging
import threading

import pytest
from prometheus_client import CollectorRegistry

import backrun
from backrun.joblog import LoggingMiddleware
from backrun.jobs import Job
from backrun.observability.metrics import MetricsMiddleware

SLOW_WRITE_S = 0.5


class SlowOutcomeStorage(backrun.MemoryStorage):
    """Writing a finished job takes SLOW_WRITE_S (the fault injected, not a wait)."""

    def update(self, job: Job) -> None:
        if job.finished:
            threading.Event().wait(SLOW_WRITE_S)
        super().update(job)


def test_log_and_histogram_durations_exclude_the_outcome_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    engine = backrun.Engine(
        SlowOutcomeStorage(),
        middleware=[LoggingMiddleware(), MetricsMiddleware(registry=registry)],
    )
    engine.add_handler(lambda payload: None, name="instant")
    caplog.set_level(logging.INFO, logger="backrun.jobs")
    try:
        job = engine.enqueue("instant", {})
        engine.run_until_idle(timeout=10)
    finally:
        engine.close()
    assert engine.get(job.id) is not None
    done = [r for r in caplog.records if getattr(r, "backrun", {}).get("event") == "job.succeeded"]
    assert len(done) == 1
    assert done[0].backrun["duration_s"] < SLOW_WRITE_S / 2, done[0].getMessage()
    total = registry.get_sample_value(
        "backrun_job_duration_seconds_sum", {"queue": "default", "handler": "instant"}
    )
    count = registry.get_sample_value(
        "backrun_job_duration_seconds_count", {"queue": "default", "handler": "instant"}
    )
    assert count == 1
    assert total is not None
    assert total < SLOW_WRITE_S / 2
