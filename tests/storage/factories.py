"""Job records for storage tests: a fixed epoch, plain defaults, any field overridable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from backrun.jobs import Job, JobState, new_job_id

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def make_job(**changes: Any) -> Job:
    """A new job due at ``T0`` (SCHEDULED if ``run_at`` is later, else QUEUED)."""
    run_at = changes.pop("run_at", T0)
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "tests.noop",
        "payload": {"n": 1},
        "run_at": run_at,
        "created_at": T0,
        "state": JobState.SCHEDULED if run_at > T0 else JobState.QUEUED,
    }
    fields.update(changes)
    return Job(**fields)
