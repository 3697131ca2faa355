"""Turning enqueue arguments into a new job record, refusing bad input first."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta

from .handlers import HandlerSpec
from .jobs import Job, JobState, new_job_id
from .retries import RetryPolicy
from .serialization import check_payload

__all__ = ["QUEUE_NAME", "build_job", "check_queue", "due_time"]

QUEUE_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # PostgreSQL's integer column


def check_queue(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name; raise ``ValueError`` otherwise."""
    if not isinstance(queue, str) or QUEUE_NAME.match(queue) is None:
        raise ValueError(f"queue names are 1-64 characters of A-Z a-z 0-9 _ . - (got {queue!r})")
    return queue


def due_time(now: datetime, delay: timedelta | float | None, at: datetime | None) -> datetime:
    """When a job enqueued ``now`` with ``delay=`` or ``at=`` may first run."""
    if delay is not None and at is not None:
        raise ValueError("give delay= or at=, not both")
    if at is not None:
        if not isinstance(at, datetime):
            raise TypeError("at= must be a datetime")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at= must be timezone-aware (e.g. datetime.now(UTC))")
        return at
    if delay is None:
        return now
    if isinstance(delay, bool) or not isinstance(delay, timedelta | int | float):
        raise TypeError("delay= must be a timedelta or a number of seconds")
    if isinstance(delay, float) and not math.isfinite(delay):
        raise ValueError(f"delay= must be a finite number of seconds, not {delay!r}")
    try:
        span = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
        if span < timedelta(0):
            raise ValueError("delay= must not be negative")
        return now + span
    except OverflowError:
        raise ValueError(
            f"delay= {delay!r} is too long: the job would run after the year 9999"
        ) from None


def build_job(
    spec: HandlerSpec,
    payload: object,
    *,
    now: datetime,
    delay: timedelta | float | None,
    at: datetime | None,
    queue: str | None,
    priority: int,
    headers: Mapping[str, str] | None,
    default_policy: RetryPolicy,
    max_payload_bytes: int,
    max_payload_depth: int,
) -> Job:
    """Validate everything about a new job and return its record; nothing is stored.

    Raises:
        pydantic.ValidationError: the payload does not fit the handler's type.
        PayloadTooLarge: the payload exceeds the size or depth limit.
        ValueError: the payload holds NaN, an infinity or an int beyond 64 bits;
            a ``delay`` that is negative, not finite or past the year 9999; a
            naive ``at``; an invalid ``queue`` (``""`` included); a
            ``priority`` outside 32 bits.
        TypeError: ``delay``, ``at``, ``priority`` or ``headers`` of the wrong type.
    """
    data = spec.dump({} if payload is None else payload, max_depth=max_payload_depth)
    check_payload(data, max_bytes=max_payload_bytes, max_depth=max_payload_depth)
    run_at = due_time(now, delay, at)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError("priority must be an int")
    if not _INT_MIN <= priority <= _INT_MAX:
        raise ValueError("priority must fit in 32 bits")
    if headers and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise TypeError("headers= must map str to str")
    policy = spec.retry if spec.retry is not None else default_policy
    fields = _NEW_JOB_FIELDS.copy()
    fields["id"] = new_job_id()
    fields["handler"] = spec.name
    fields["payload"] = data
    # An explicit queue is checked as given: "" is an error, not the default.
    fields["queue"] = check_queue(queue) if queue is not None else (spec.queue or "default")
    fields["priority"] = priority
    fields["state"] = JobState.SCHEDULED if run_at > now else JobState.QUEUED
    fields["max_attempts"] = policy.max_attempts
    fields["run_at"] = run_at
    fields["created_at"] = now
    fields["headers"] = dict(headers) if headers else {}
    fields["version"] = spec.version
    # Job(...) runs a frozen dataclass __init__, a setattr per field (5 us, a
    # third of build_job); a Job is its instance dict, so this builds the same
    # record, as Job.replace does.
    job = _new_object(Job)
    _set_attribute(job, "__dict__", fields)
    return job


# Every field of a new job that build_job does not set, at its default.
_NEW_JOB_FIELDS = dict(Job(id="0" * 32, handler="", payload={}).__dict__)
_new_object = object.__new__
_set_attribute = object.__setattr__
