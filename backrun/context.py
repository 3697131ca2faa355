"""What a running attempt knows about itself: JobContext and current_job()."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .jobs import Job

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["JobContext", "current_job"]


@dataclass(slots=True)
class JobContext:
    """The context of one attempt, passed to handlers that ask for it.

    Attributes:
        job: the job record as claimed (state RUNNING).
        attempt: 1 for the first attempt, 2 for the first retry, ...
        worker_id: the id of the worker running the attempt.
        deadline: when the attempt times out (aware UTC), or ``None``.
        cancelled: set when the job is cancelled, times out, or the worker
            shuts down; long handlers should check it and return early.
        engine: the engine running the attempt (to enqueue follow-up jobs).
    """

    job: Job
    attempt: int
    worker_id: str
    deadline: datetime | None
    cancelled: threading.Event
    engine: Engine


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "backrun_current_job", default=None
)


def current_job() -> JobContext | None:
    """Return the context of the attempt running in this thread, or ``None``."""
    return _current.get()
