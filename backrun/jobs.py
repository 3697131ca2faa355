"""The job record, its states, and job ids."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "FINISHED_STATES",
    "JOB_ID_PATTERN",
    "TRANSITIONS",
    "WORKER_CRASHED",
    "WORKER_CRASHED_UNCHARGED",
    "Job",
    "JobError",
    "JobState",
    "Outcome",
    "Progress",
    "check_job_id",
    "job_of_fields",
    "new_claim_token",
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

_S = JobState
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # claim (when due), cancel; requeue makes a SCHEDULED job due (QUEUED).
    _S.SCHEDULED: frozenset({_S.RUNNING, _S.CANCELLED, _S.QUEUED}),
    # claim, cancel.
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED}),
    # The owner's update only: an outcome, a retry, a release, or a new lease.
    _S.RUNNING: frozenset(
        {_S.RUNNING, _S.SUCCEEDED, _S.SCHEDULED, _S.QUEUED, _S.DEAD, _S.CANCELLED}
    ),
    # purge only deletes; a success is never run again.
    _S.SUCCEEDED: frozenset(),
    # requeue.
    _S.DEAD: frozenset({_S.QUEUED}),
    _S.CANCELLED: frozenset({_S.QUEUED}),
}
"""Every state change a store may make, by the state a job is in.

A new job starts SCHEDULED or QUEUED (``add``). Only ``claim`` makes a job
RUNNING, only the claim's owner (``update`` with its ``claim_token``) moves it
out of RUNNING, and only ``requeue`` brings a DEAD or CANCELLED job back. The
storage contract suite checks every store against this table.
"""


class Outcome(enum.StrEnum):
    """What one attempt came to: the one vocabulary of logs, metrics and traces."""

    SUCCEEDED = "succeeded"
    """The handler returned: the job is SUCCEEDED."""
    RETRIED = "retried"
    """The attempt failed and another is scheduled (the job is SCHEDULED)."""
    DEAD = "dead"
    """The attempt failed and no other will run (the job is DEAD)."""
    CANCELLED = "cancelled"
    """A cancel stopped the job (the job is CANCELLED)."""
    RELEASED = "released"
    """The worker stopped and gave the job back uncharged (the job is QUEUED)."""

    @classmethod
    def of(cls, state: JobState) -> Outcome:
        """The outcome of an attempt that left its job in ``state``.

        Raises:
            ValueError: ``state`` is RUNNING, which no recorded attempt leaves.
        """
        try:
            return _OUTCOME_OF_STATE[state]
        except KeyError:
            raise ValueError(f"no attempt outcome leaves a job {state.value}") from None


_OUTCOME_OF_STATE = {
    JobState.SUCCEEDED: Outcome.SUCCEEDED,
    JobState.SCHEDULED: Outcome.RETRIED,
    JobState.DEAD: Outcome.DEAD,
    JobState.CANCELLED: Outcome.CANCELLED,
    JobState.QUEUED: Outcome.RELEASED,
}

WORKER_CRASHED = "WorkerCrashed"
"""The ``JobError.type`` recorded when a job's worker died while running it alone.

Only these count toward ``max_crashes``: a crash is charged to a job only
when it was running alone in its worker (see :attr:`Job.run_alone`).
"""

WORKER_CRASHED_UNCHARGED = "WorkerCrashedUncharged"
"""The ``JobError.type`` recorded when a job's worker died while it ran beside others.

The crash may have been a neighbour's doing, so it is not charged: the attempt
is given back and the job runs again alone. Kept in ``errors`` for operators;
never counted toward ``max_crashes``.
"""

JOB_ID_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")


# Claim tokens are this process's random prefix (renewed in a forked child)
# and a counter: unique, and cheaper than random bits per claim.
_token_prefix = os.urandom(8).hex()
_token_counter = itertools.count()


def _new_token_prefix() -> None:
    global _token_prefix
    _token_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_token_prefix)


# Job ids draw from one generator per process (getrandbits is one C call,
# atomic for the threads), reseeded in a forked child like the token prefix: the
# thread-local lookup and reseed check cost as much as the id's formatting.
_id_random = random.Random(os.urandom(32))
_id_bits = _id_random.getrandbits


def _reseed_ids() -> None:
    _id_random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed_ids)


def new_job_id() -> str:
    """Return a fresh job id: 32 hex digits, nanosecond time first, so ids sort by creation."""
    # The 128-bit number's 32 hex digits: twice as fast as formatting each half.
    return ((time.time_ns() << 64) | _id_bits(64)).to_bytes(16, "big").hex()


def new_claim_token() -> str:
    """Return a token unique to one claim (random per process, plus a counter)."""
    return f"{_token_prefix}{next(_token_counter):x}"


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


class Progress(NamedTuple):
    """How far a running job says it is (``ctx.progress``): ``done`` of ``total``."""

    done: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True)
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
    run_alone: bool = False
    errors: tuple[JobError, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    result: Any = None
    """The JSON form of the handler's return value, stored with SUCCEEDED (else ``None``)."""
    progress: Progress | None = None
    """The latest ``ctx.progress`` the job reported, or ``None``."""
    version: int = 1
    """The payload schema version of the handler that enqueued it (``Handler.version``)."""
    followups: tuple[Mapping[str, Any], ...] = ()
    """``then=`` follow-ups, as stored: the store enqueues them when this job succeeds
    (see :mod:`backrun.followups`)."""
    unique_key: str | None = None
    """Set by ``enqueue(unique_key=)``: no second job of this handler with this
    key is stored while this one waits or runs, or before ``unique_until``."""
    unique_until: datetime | None = None
    """``created_at + unique_for``: the key stays taken until then, whatever the state."""
    limited: bool = False
    """The handler had a concurrency or rate limit when the job was enqueued."""
    concurrency_key: str | None = None
    """The handler's ``concurrency_key`` of this payload: the limit applies per key."""

    @property
    def last_error(self) -> JobError | None:
        """The most recent attempt's error, or ``None``."""
        return self.errors[-1] if self.errors else None

    @property
    def finished(self) -> bool:
        """True once the job is SUCCEEDED, DEAD or CANCELLED."""
        return self.state in FINISHED_STATES

    def replace(self, **changes: Any) -> Job:
        """Return a copy with ``changes`` applied (like ``dataclasses.replace``, faster).

        Raises:
            TypeError: a name in ``changes`` is not a field of Job.
        """
        # Not slotted on purpose: copying the instance dict is one C call,
        # where dataclasses.replace re-runs __init__ (it dominated the claim path).
        fields = self.__dict__.copy()
        fields.update(changes)
        if len(fields) != _FIELD_COUNT:  # a name that is not a field added an entry
            raise TypeError(f"Job has no field(s) {sorted(changes.keys() - _FIELD_SET)}")
        new = _new_job(Job)
        _set(new, "__dict__", fields)
        return new


_FIELD_SET = frozenset(f.name for f in dataclasses.fields(Job))
_FIELD_COUNT = len(_FIELD_SET)
_new_job = object.__new__
_set = object.__setattr__


def job_of_fields(fields: dict[str, Any]) -> Job:
    """The Job whose instance dict is ``fields``, taken as is (no copy, no check).

    For the per-job paths that copy ``job.__dict__`` and set known field names
    in it: one fewer call and keyword dict than :meth:`Job.replace`. ``fields``
    must hold every field and nothing else, and must not be used afterwards.
    """
    new = _new_job(Job)
    _set(new, "__dict__", fields)
    return new
