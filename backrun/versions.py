"""Payload versions: a job stored by a newer deploy waits for a worker that knows it.

Each job is stored with its handler's ``version`` (default 1). A worker that
claims a job whose version is *higher* than its own handler's (a rolling
deploy: the producers run the new code, this worker the old) cannot validate
the payload correctly, and failing it would lose work that a newer worker
can do. So the job is given back uncharged (its attempt returned), due again
:data:`NEWER_VERSION_DELAY` later, and this worker goes on with other jobs.
Older versions are upcast by the handler (``Handler.upcast``) before
validation, in :mod:`backrun.handlers`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .handlers import HandlerSpec
from .jobs import Job, JobState

__all__ = ["NEWER_VERSION_DELAY", "NewerVersion", "defer_newer", "newer_version"]

NEWER_VERSION_DELAY = timedelta(seconds=30)
"""How long a job of a newer payload version waits before any worker looks again."""


class NewerVersion(Exception):
    """A claimed job's payload version is newer than this worker's handler knows."""

    def __init__(self, job: Job, known: int) -> None:
        super().__init__(
            f"job {job.id} ({job.handler}) has payload version {job.version}; "
            f"this worker knows version {known}"
        )
        self.job = job
        self.known = known


def newer_version(job: Job, spec: HandlerSpec | None) -> NewerVersion | None:
    """A :class:`NewerVersion` when ``job`` is newer than ``spec`` knows, else ``None``."""
    if spec is None or job.version <= spec.version:
        return None
    return NewerVersion(job, spec.version)


def defer_newer(job: Job, now: datetime) -> Job:
    """The record that gives a too-new claimed job back: uncharged, due later."""
    return job.replace(
        state=JobState.SCHEDULED,
        attempts=max(job.attempts - 1, 0),
        run_at=now + NEWER_VERSION_DELAY,
        started_at=None,
        lease_expires_at=None,
    )
