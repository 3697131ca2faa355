"""Job log lines: one when an attempt starts, one when it ends.

:class:`LoggingMiddleware` writes through the ``backrun.jobs`` logger, so an
application routes the lines like any other log. Each record carries the
structured fields in ``record.backrun``; :class:`JsonFormatter` prints them
as one JSON object a line, and :func:`configure_logging` sets up a stream
handler in either format (the worker commands call it).

Text lines look like::

    send_mail[0187...] started (attempt 1/4)
    send_mail[0187...] succeeded in 0.012s
    send_mail[0187...] failed (ValueError) attempt 2/4, retry in 4.1s
    send_mail[0187...] failed (ValueError) dead after 4 attempts
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal

from .context import JobContext
from .jobs import Job, JobState
from .middleware import Middleware, ProcessNext

__all__ = ["JsonFormatter", "LoggingMiddleware", "configure_logging"]

LOGGER_NAME = "backrun.jobs"

LogFormat = Literal["text", "json"]

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
        self._started: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Log the start line, remember when, and run the attempt."""
        job = ctx.job
        with self._lock:
            if len(self._started) >= _MAX_PENDING:
                self._started.clear()
            self._started[(job.id, ctx.attempt)] = time.monotonic()
        self._log(
            self.level,
            f"{_label(job)} started (attempt {ctx.attempt}/{job.max_attempts})",
            "started",
            job,
            ctx.attempt,
        )
        call_next(ctx)

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """Log how the attempt ended, from the state the worker recorded."""
        with self._lock:
            began = self._started.pop((job.id, ctx.attempt), None)
        duration = None if began is None else time.monotonic() - began
        took = "" if duration is None else f" in {duration:.3f}s"
        label = _label(job)
        error_type = None if error is None else type(error).__name__
        extra: dict[str, Any] = {"duration_s": duration, "error_type": error_type}
        state = job.state
        if state is JobState.SUCCEEDED:
            self._log(self.level, f"{label} succeeded{took}", "succeeded", job, ctx.attempt, extra)
        elif state is JobState.SCHEDULED:
            seconds = 0.0
            if job.run_at is not None:
                seconds = max((job.run_at - ctx.engine.clock.now()).total_seconds(), 0.0)
            extra["retry_in_s"] = seconds
            self._log(
                logging.WARNING,
                f"{label} failed ({error_type}) attempt {ctx.attempt}/{job.max_attempts}, "
                f"retry in {seconds:.1f}s",
                "retrying",
                job,
                ctx.attempt,
                extra,
            )
        elif state is JobState.DEAD:
            self._log(
                logging.ERROR,
                f"{label} failed ({error_type}) dead after {job.attempts} attempts",
                "dead",
                job,
                ctx.attempt,
                extra,
            )
        elif state is JobState.CANCELLED:
            self._log(self.level, f"{label} cancelled{took}", "cancelled", job, ctx.attempt, extra)
        else:
            self._log(
                logging.WARNING,
                f"{label} released back to the queue (worker stopping)",
                "released",
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
            "event": f"job.{event}",
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


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and any ``backrun`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "backrun", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(
    log_format: LogFormat = "text", *, stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Send backrun's log lines (jobs, worker, engine) to ``stream`` in ``log_format``.

    Adds one handler to the ``backrun`` logger (replacing one added by an
    earlier call) and returns it. Lines look like
    ``2026-01-01 12:00:00,000 INFO send_mail[...] succeeded in 0.012s``.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name("backrun-cli")
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("backrun")
    for old in list(root.handlers):
        if old.get_name() == "backrun-cli":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
