"""The job record, its states, and job ids."""

from __future__ import annotations

import dataclasses
import enum
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "FINISHED_STATES",
    "JOB_ID_PATTERN",
    "WORKER_CRASHED",
    "Job",
    "JobError",
    "JobState",
    "check_job_id",
    "new_job_id",
]


class JobState(enum.StrEnum):
    """Where a job is in its life. Stored as these strings."""

    SCHEDULED = "scheduled"
    """Waiting for its ``run_at``: delayed, or a retry in backoff."""
    QUEUED = "queued"
    """Due; waiting for a free worker slot."""
    RUNNING = "running"
    """Claimed by a worker; an attempt is under way."""
    SUCCEEDED = "succeeded"
    """Finished: an attempt returned normally."""
    DEAD = "dead"
    """Finished: retries exhausted, not retryable, or it kept killing its worker."""
    CANCELLED = "cancelled"
    """Finished: cancelled before it could succeed."""


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})

WORKER_CRASHED = "WorkerCrashed"
"""The ``JobError.type`` recorded when a job's worker died while running it."""

JOB_ID_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")


def new_job_id() -> str:
    """Return a fresh job id: 32 hex digits, nanosecond time first, so ids sort by creation."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a well-formed job id; raise ``ValueError`` otherwise.

    Stores call this before building a path or a query from an id, so a hostile
    id (``../x``, an absolute path, NUL bytes, a huge string) never reaches one.
    """
    if not isinstance(job_id, str) or JOB_ID_PATTERN.match(job_id) is None:
        shown = repr(job_id) if len(repr(job_id)) <= 80 else repr(job_id)[:77] + "..."
        raise ValueError(f"not a backrun job id: {shown} (expected 32 lowercase hex digits)")
    return job_id


@dataclass(frozen=True, slots=True)
class JobError:
    """One failed attempt: what was raised, and when."""

    type: str
    message: str
    traceback: str
    attempt: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored: an immutable record. Change it with ``dataclasses.replace``.

    Times are aware UTC datetimes. ``payload`` is the JSON-ready form of the
    handler's payload model; ``headers`` carries trace context and other
    metadata. ``attempts`` counts attempts started (charged at claim);
    ``claim_token`` identifies the current claim, so a worker that lost its
    claim can never overwrite the job.
    """

    id: str
    handler: str
    payload: dict[str, Any]
    queue: str = "default"
    priority: int = 0
    state: JobState = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 4
    run_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    claim_token: str | None = None
    cancel_requested: bool = False
    errors: tuple[JobError, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def last_error(self) -> JobError | None:
        """The most recent attempt's error, or ``None``."""
        return self.errors[-1] if self.errors else None

    @property
    def finished(self) -> bool:
        """True once the job is SUCCEEDED, DEAD or CANCELLED."""
        return self.state in FINISHED_STATES

    def replace(self, **changes: Any) -> Job:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
