"""Stamping a new job with what uniqueness and limits need from it at enqueue time.

The store never sees handlers, so what it must know is written into the job:
its ``unique_key`` and ``unique_until`` (``created_at + unique_for``), whether
its handler is ``limited``, and its ``concurrency_key`` (the handler's
``concurrency_key`` applied to the validated payload).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from .handlers import HandlerSpec
from .jobs import Job
from .limits import check_unique_key
from .storage.base import Storage

__all__ = ["add_unique", "stamp"]


def _span(unique_for: timedelta | float) -> timedelta:
    if isinstance(unique_for, bool) or not isinstance(unique_for, timedelta | int | float):
        raise TypeError("unique_for= must be a timedelta or a number of seconds")
    if isinstance(unique_for, float) and not math.isfinite(unique_for):
        raise ValueError("unique_for= must be finite")
    span = unique_for if isinstance(unique_for, timedelta) else timedelta(seconds=unique_for)
    if span < timedelta(0):
        raise ValueError("unique_for= must not be negative")
    return span


def stamp(
    job: Job,
    spec: HandlerSpec,
    *,
    unique_key: str | None,
    unique_for: timedelta | float | None,
) -> Job:
    """Return ``job`` with its unique key and limit fields set.

    Raises:
        TypeError: a key that is not a str; ``unique_for`` of the wrong type.
        ValueError: an empty, overlong or NUL-holding key; ``unique_for``
            without ``unique_key``, negative or not finite.
    """
    changes: dict[str, object] = {}
    if unique_key is not None:
        changes["unique_key"] = check_unique_key(unique_key)
        if unique_for is not None:
            assert job.created_at is not None
            try:
                changes["unique_until"] = job.created_at + _span(unique_for)
            except OverflowError:
                raise ValueError("unique_for= reaches past the year 9999") from None
    elif unique_for is not None:
        raise ValueError("unique_for= needs unique_key=")
    if spec.limits is not None:
        changes["limited"] = True
        if spec.concurrency_key is not None:
            value = spec.concurrency_key(spec.adapter.validate_python(job.payload))
            changes["concurrency_key"] = check_unique_key(value)
    return job.replace(**changes) if changes else job


def add_unique(
    storage: Storage, jobs: Sequence[Job], *, now: datetime, connection: Any = None
) -> list[Job]:
    """Store ``jobs`` through :meth:`Storage.add_unique`, if the store can.

    Raises:
        TypeError: the store does not declare ``unique_jobs``.
    """
    if not storage.capabilities.unique_jobs:
        raise TypeError(f"{type(storage).__name__} cannot store unique jobs (unique_key=)")
    if connection is None:
        return storage.add_unique(jobs, now=now)
    return storage.add_unique(jobs, now=now, connection=connection)
