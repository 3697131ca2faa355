"""backrun: sync-first background jobs for Django, Flask and plain Python.

Typed handlers, a middleware pipeline, persisted retries, a thread-pool worker
and durable stores. See the README for a tour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import Clock, SystemClock
from .context import JobContext, current_job
from .engine import Engine
from .errors import (
    BackrunError,
    DoNotRetry,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    StorageError,
    UnknownHandler,
)
from .followups import Next
from .handlers import Handler, handler
from .jobs import Job, JobError, JobState, Progress
from .limits import RateLimit
from .middleware import Middleware
from .results import JobFailed
from .retries import RetryPolicy
from .schedules import Schedule
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .worker import Worker
from .workerinfo import WorkerInfo

if TYPE_CHECKING:
    from .storage.jsonfile import JsonFileStorage
    from .storage.postgres import PostgresStorage

__version__ = "0.1.0"

__all__ = [
    "BackrunError",
    "Clock",
    "DoNotRetry",
    "Engine",
    "Handler",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "JsonFileStorage",
    "LeaseLost",
    "MemoryStorage",
    "Middleware",
    "Next",
    "PayloadTooLarge",
    "PostgresStorage",
    "Progress",
    "RateLimit",
    "RetryPolicy",
    "Schedule",
    "Storage",
    "StorageError",
    "SystemClock",
    "UnknownHandler",
    "Worker",
    "WorkerInfo",
    "__version__",
    "current_job",
    "handler",
]


def __getattr__(name: str) -> Any:
    # The stores with heavier imports load on first use, so `import backrun`
    # stays light and never imports psycopg.
    if name == "JsonFileStorage":
        from .storage.jsonfile import JsonFileStorage

        return JsonFileStorage
    if name == "PostgresStorage":
        try:
            from .storage.postgres import PostgresStorage
        except ImportError as exc:
            raise ImportError(
                f"PostgresStorage needs the postgres extra: pip install 'backrun[postgres]' ({exc})"
            ) from exc
        return PostgresStorage
    raise AttributeError(f"module 'backrun' has no attribute {name!r}")
