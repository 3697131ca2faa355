"""What a running attempt knows about itself: JobContext and current_job()."""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from .clock import Clock
from .jobs import Job, Progress

__all__ = ["PROGRESS_INTERVAL", "EngineHandle", "JobContext", "current_job"]

log = logging.getLogger("backrun.worker")

PROGRESS_INTERVAL = 1.0
"""Seconds between two progress writes of one attempt (``ctx.progress`` throttling)."""


class EngineHandle(Protocol):
    """What an attempt may use of the engine that runs it.

    :class:`~backrun.engine.Engine` satisfies it. :class:`JobContext` depends on
    this, not on the engine, so the attempt layer needs nothing above it
    (not even for type checking), and a test can pass a small fake.
    """

    @property
    def clock(self) -> Clock:
        """The engine's clock."""
        ...

    def enqueue(
        self,
        handler: Any,
        payload: object = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        queue: str | None = None,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        connection: Any = None,
        then: Sequence[Any] = (),
    ) -> Job:
        """Enqueue a follow-up job; see :meth:`backrun.Engine.enqueue`."""
        ...

    def get(self, job_id: str) -> Job | None:
        """Read a job; see :meth:`backrun.Engine.get`."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; see :meth:`backrun.Engine.cancel`."""
        ...


# Guards the lazy creation of cancellation events; taken only when a handler
# first looks at ``ctx.cancelled`` or when an attempt is cancelled.
_lazy = threading.Lock()


class JobContext:
    """The context of one attempt, passed to handlers that ask for it.

    Attributes:
        job: the job record as claimed (state RUNNING).
        attempt: 1 for the first attempt, 2 for the first retry, ...
        worker_id: the id of the worker running the attempt.
        deadline: when the attempt times out (aware UTC), or ``None``.
        engine: the engine running the attempt (to enqueue follow-up jobs);
            typed as the narrow :class:`EngineHandle`.
        returned: what the handler returned (set by the worker; stored as the
            job's result on success).
        latest_progress: the last :meth:`progress` reported, or ``None``.
        progress_sink: where written progress reports go (the worker stores
            them); ``None`` outside a worker.

    Tests that call a handler's ``execute`` directly may build one, passing
    their own ``cancelled`` event or letting it be created on first use.
    """

    __slots__ = (
        "_cancel_requested",
        "_event",
        "_progress_at",
        "_progress_listeners",
        "attempt",
        "deadline",
        "engine",
        "job",
        "latest_progress",
        "progress_sink",
        "returned",
        "worker_id",
    )

    def __init__(
        self,
        job: Job,
        attempt: int,
        worker_id: str,
        deadline: datetime | None,
        engine: EngineHandle,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.attempt = attempt
        self.worker_id = worker_id
        self.deadline = deadline
        self.engine = engine
        self._event = cancelled
        self._cancel_requested = False
        self.returned: Any = None
        self.latest_progress: Progress | None = None
        self._progress_at = -math.inf
        self._progress_listeners: tuple[Callable[[Progress], None], ...] = ()
        self.progress_sink: Callable[[JobContext, Progress], None] | None = None

    def __repr__(self) -> str:
        return f"<JobContext job={self.job.id} handler={self.job.handler} attempt={self.attempt}>"

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job is cancelled, times out, or the worker shuts down.

        Long handlers should check it (``ctx.cancelled.is_set()``, or wait on
        it instead of sleeping) and return early. A cancel made in another
        process reaches it within about a second on stores that announce
        changes (the JSON store and PostgreSQL), else at the next heartbeat.

        When the job was cancelled, the attempt ends CANCELLED however the
        handler ends, returning normally included: backrun cannot tell work
        finished from work abandoned, and the caller asked it to stop. (After a
        timeout the attempt is recorded as timed out; at shutdown, released.)
        """
        event = self._event
        if event is None:
            # Created on first use: most handlers never look, and building an
            # Event costs more than the rest of an attempt's bookkeeping.
            with _lazy:
                event = self._event
                if event is None:
                    event = threading.Event()
                    if self._cancel_requested:
                        event.set()
                    self._event = event
        return event

    def progress(
        self, done: float, *, total: float | None = None, message: str | None = None
    ) -> None:
        """Say how far the job is: ``done`` of ``total`` (units of your choosing).

        The latest value is visible in ``engine.get(job_id).progress``, the CLI
        and the dashboard, and on the attempt's span as an event. Writes are
        throttled to one per second per job (a call in between only updates
        the value that the next write, or the job's outcome, stores), so a
        tight loop may call this freely.

        Raises:
            ValueError: ``done`` or ``total`` is not a finite number.
        """
        for value in (done, total):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError(f"progress numbers must be finite numbers, not {value!r}")
        current = Progress(done, total, None if message is None else str(message))
        self.latest_progress = current
        now = time.monotonic()
        finished = total is not None and done >= total
        if now - self._progress_at < PROGRESS_INTERVAL and not finished:
            return
        self._progress_at = now
        sink = self.progress_sink
        if sink is not None:
            sink(self, current)
        for listener in self._progress_listeners:
            listener(current)

    def on_progress(self, listener: Callable[[Progress], None]) -> None:
        """Call ``listener`` with each progress report that is written (for middleware).

        Listeners run in the handler's thread, at most once a second; one
        that raises is logged and skipped.
        """
        # A tuple: most attempts have no listener, and an empty one costs nothing to make.
        self._progress_listeners = (*self._progress_listeners, _guarded(listener))

    def cancel(self) -> None:
        """Set :attr:`cancelled` (the worker calls this; handlers need not)."""
        with _lazy:
            self._cancel_requested = True
            event = self._event
        if event is not None:
            event.set()


def _guarded(listener: Callable[[Progress], None]) -> Callable[[Progress], None]:
    def call(progress: Progress) -> None:
        try:
            listener(progress)
        except Exception:
            log.exception("progress listener %r failed", listener)

    return call


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "backrun_current_job", default=None
)


def current_job() -> JobContext | None:
    """Return the context of the attempt running in this thread, or ``None``."""
    return _current.get()
