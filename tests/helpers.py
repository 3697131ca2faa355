"""The test helpers every suite shares: job records at a fixed epoch, and waiting on a condition.

One ``make_job`` and one ``wait_until`` for the whole test tree (storage,
observability, CLI, crash tests); suites that need other defaults pass them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from backrun.jobs import Job, JobState, new_job_id

T0 = datetime(2030, 1, 1, tzinfo=UTC)
"""The fixed epoch of storage tests: times are T0 plus offsets, never the wall clock."""

LEASE = timedelta(seconds=60)


def make_job(*, at: datetime = T0, **changes: Any) -> Job:
    """A new job created at ``at`` and due then (SCHEDULED if ``run_at`` is later, else QUEUED).

    Any field can be overridden; ``state`` follows ``run_at`` unless given.
    """
    run_at = changes.pop("run_at", at)
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "tests.noop",
        "payload": {"n": 1},
        "run_at": run_at,
        "created_at": at,
        "state": JobState.SCHEDULED if run_at > at else JobState.QUEUED,
    }
    fields.update(changes)
    return Job(**fields)


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, *, what: str = "") -> None:
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds.

    A deadline, never a bare sleep: a test waits exactly as long as it must.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        pause.wait(0.01)
