"""Job log lines: one when an attempt starts, one when it ends.

:class:`LoggingMiddleware` writes through the ``backrun.jobs`` logger, so an
application routes the lines like any other log. Each record carries the
structured fields in ``record.backrun``; :class:`JsonFormatter` prints them
as one JSON object a line, and :func:`configure_logging` sets up a stream
handler in either format (the worker commands call it; see
:mod:`backrun.logformat`). While the attempt runs, records logged by the
handler carry the job (:func:`backrun.logformat.job_scope`).

The duration is the handler's alone: it ends when the handler returns, not
when the outcome has been written (a store write retried on a full disk is
not the job's time).

Text lines look like::

    send_mail[0187...] started (attempt 1/4)
    send_mail[0187...] succeeded in 0.012s
    send_mail[0187...] failed (ValueError: no such user) attempt 2/4, retry in 4.1s
    send_mail[0187...] failed (ValueError: no such user) dead after 4 attempts
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .context import JobContext
from .jobs import Job, JobState, Outcome
from .logformat import JOB_LOGGER, JsonFormatter, LogFormat, configure_logging, job_scope
from .middleware import Middleware, ProcessNext

__all__ = ["JsonFormatter", "LogFormat", "LoggingMiddleware", "configure_logging"]

LOGGER_NAME = JOB_LOGGER
_MESSAGE_WIDTH = 200

# Starts whose attempt_finished never came (the claim was lost) are dropped
# once this many are pending.
_MAX_PENDING = 4096


class LoggingMiddleware(Middleware):
    """Log the start and the outcome of every attempt.

    Args:
        logger: where the lines go (default: the ``backrun.jobs`` logger).
        level: the level of start and success lines; failures log at WARNING,
            DEAD at ERROR.
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self.level = level
        # (job id, attempt) -> [start, end or None], monotonic seconds.
        self._started: dict[tuple[str, int], list[float | None]] = {}
        self._lock = threading.Lock()

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Log the start line, time the rest of the chain, tag its records with the job."""
        job = ctx.job
        times: list[float | None] = [time.monotonic(), None]
        with self._lock:
            if len(self._started) >= _MAX_PENDING:
                self._started.clear()
            self._started[(job.id, ctx.attempt)] = times
        with job_scope(job.id, job.handler, ctx.attempt, job.queue):
            self._log(
                self.level,
                f"{_label(job)} started (attempt {ctx.attempt}/{job.max_attempts})",
                "started",
                job,
                ctx.attempt,
            )
            try:
                call_next(ctx)
            finally:
                times[1] = time.monotonic()

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """Log how the attempt ended, from the state the worker recorded."""
        with self._lock:
            times = self._started.pop((job.id, ctx.attempt), None)
        duration = None
        if times is not None and times[0] is not None:
            # A handler still running (timed out, or its claim lost) is timed until now.
            duration = (times[1] if times[1] is not None else time.monotonic()) - times[0]
        took = "" if duration is None else f" in {duration:.3f}s"
        label = _label(job)
        error_type = None if error is None else type(error).__name__
        why = "" if error is None else _describe(error)
        extra: dict[str, Any] = {"duration_s": duration, "error_type": error_type}
        if error is not None:
            extra["error"] = why
        state = job.state
        if state is JobState.SUCCEEDED:
            self._log(
                self.level, f"{label} succeeded{took}", Outcome.SUCCEEDED, job, ctx.attempt, extra
            )
        elif state is JobState.SCHEDULED:
            seconds = 0.0
            if job.run_at is not None:
                seconds = max((job.run_at - ctx.engine.clock.now()).total_seconds(), 0.0)
            extra["retry_in_s"] = seconds
            self._log(
                logging.WARNING,
                f"{label} failed ({why}) attempt {ctx.attempt}/{job.max_attempts}, "
                f"retry in {seconds:.1f}s",
                Outcome.RETRIED,
                job,
                ctx.attempt,
                extra,
            )
        elif state is JobState.DEAD:
            self._log(
                logging.ERROR,
                f"{label} failed ({why}) dead after {_plural(job.attempts, 'attempt')}",
                Outcome.DEAD,
                job,
                ctx.attempt,
                extra,
            )
        elif state is JobState.CANCELLED:
            self._log(
                self.level, f"{label} cancelled{took}", Outcome.CANCELLED, job, ctx.attempt, extra
            )
        else:
            self._log(
                logging.WARNING,
                f"{label} released back to the queue (worker stopping)",
                Outcome.RELEASED,
                job,
                ctx.attempt,
                extra,
            )

    def _log(
        self,
        level: int,
        message: str,
        event: str,
        job: Job,
        attempt: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not self.logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "event": f"job.{event}",  # an Outcome, or "started"
            "job_id": job.id,
            "handler": job.handler,
            "queue": job.queue,
            "attempt": attempt,
            "max_attempts": job.max_attempts,
            "state": job.state.value,
        }
        if extra:
            fields.update({k: v for k, v in extra.items() if v is not None})
        self.logger.log(level, message, extra={"backrun": fields})


def _label(job: Job) -> str:
    return f"{job.handler}[{job.id}]"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _describe(error: BaseException) -> str:
    """``ValueError: no such user``: the type and the message's first line, shortened."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= _MESSAGE_WIDTH else text[: _MESSAGE_WIDTH - 3] + "..."
