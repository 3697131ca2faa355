"""Helpers for the observability tests: jobs and attempt contexts without an engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from backrun.context import JobContext
from backrun.jobs import Job, JobState, new_job_id

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_job(**changes: Any) -> Job:
    """A QUEUED job as enqueued (before any middleware)."""
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "emails.send",
        "payload": {"to": "a@example.com"},
        "queue": "mail",
        "run_at": T0,
        "created_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


def claimed(job: Job, *, wait: float = 2.5, attempt: int = 1) -> Job:
    """``job`` as a claim returns it: RUNNING, started ``wait`` seconds after run_at."""
    assert job.run_at is not None
    return job.replace(
        state=JobState.RUNNING,
        attempts=attempt,
        started_at=job.run_at + timedelta(seconds=wait),
        worker_id="host-1-abcdef12",
        claim_token="t",
    )


def make_ctx(job: Job) -> JobContext:
    """The context of the attempt of a claimed ``job``."""
    return JobContext(
        job=job,
        attempt=job.attempts,
        worker_id="host-1-abcdef12",
        deadline=None,
        cancelled=threading.Event(),
        engine=cast(Any, None),
    )


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)
