"""The worker's log setup: which job a record belongs to, one format for every line.

A worker command calls :func:`configure_logging`, which does what Celery and
Dramatiq workers do: one handler on the *root* logger, so the application's
own loggers (``logging.getLogger(__name__)`` in a handler, Flask's
``current_app.logger``, Django's) print next to backrun's lines, in one
format, at one level; Python warnings are logged too.

While an attempt runs, :func:`job_scope` (entered by
:class:`~backrun.joblog.LoggingMiddleware`) keeps the job's id, handler and
attempt in a context variable; :class:`JobContextFilter` copies them onto
every record (``record.job_id``, ``record.job_handler``,
``record.job_attempt``), so a line logged by a handler says which job wrote it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = [
    "HANDLER_NAME",
    "JobContextFilter",
    "JobLogScope",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "current_job",
    "job_scope",
    "parse_level",
    "remove_logging",
]

LogFormat = Literal["text", "json"]

HANDLER_NAME = "backrun-cli"
"""The name of the handler :func:`configure_logging` installs (and replaces)."""

JOB_LOGGER = "backrun.jobs"


@dataclass(frozen=True)
class JobLogScope:
    """The job an attempt's log records belong to."""

    job_id: str
    handler: str
    attempt: int
    queue: str


_current: ContextVar[JobLogScope | None] = ContextVar("backrun_job_log_scope", default=None)


def current_job() -> JobLogScope | None:
    """The job whose attempt runs in this thread (or context), if any."""
    return _current.get()


@contextmanager
def job_scope(job_id: str, handler: str, attempt: int, queue: str) -> Iterator[JobLogScope]:
    """Tag every record logged inside the block with this job."""
    scope = JobLogScope(job_id, handler, attempt, queue)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


class JobContextFilter(logging.Filter):
    """Add ``job_id``, ``job_handler`` and ``job_attempt`` to each record (``None`` outside jobs).

    Attach it to a handler (not a logger: a logger's filters do not see the
    records its children propagate).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Copy the current job onto ``record``; never drops a record."""
        if getattr(record, "job_id", None) is None:
            scope = _current.get()
            record.job_id = None if scope is None else scope.job_id
            record.job_handler = None if scope is None else scope.handler
            record.job_attempt = None if scope is None else scope.attempt
        return True


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 INFO myapp.jobs: send_mail[0187...] #1: sending``.

    The job label is left out of backrun's own job lines, which start with it.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without traceback, with the job label before the message."""
        if record.name == "py.warnings":
            # "file:line: Category: text" then the source line: keep the first.
            record.message = record.message.strip().splitlines()[0]
        job_id = getattr(record, "job_id", None)
        if job_id is not None and record.name != JOB_LOGGER:
            handler = getattr(record, "job_handler", "?")
            label = f"{handler}[{job_id}] #{getattr(record, 'job_attempt', '?')}: "
            record.message = label + record.message
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the job, and ``backrun`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            data["job_id"] = job_id
            data["handler"] = getattr(record, "job_handler", None)
            data["attempt"] = getattr(record, "job_attempt", None)
        fields = getattr(record, "backrun", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_level(text: str) -> int:
    """``info`` -> ``logging.INFO`` (for ``--log-level``).

    Raises:
        ValueError: not one of DEBUG, INFO, WARNING, ERROR, CRITICAL.
    """
    name = text.strip().upper()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {text!r} (one of {', '.join(_LEVELS).lower()})")
    return int(getattr(logging, name))


def configure_logging(
    log_format: LogFormat = "text", *, stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Send every log record (backrun's and the application's) to ``stream`` in ``log_format``.

    Installs one handler on the root logger (replacing one installed by an
    earlier call), sets the root level to ``level``, tags records with the
    running job (:class:`JobContextFilter`) and routes :mod:`warnings`
    through logging. Returns the handler.

    Raises:
        ValueError: ``log_format`` is not ``text`` or ``json``.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for logger in (root, logging.getLogger("backrun")):
        for old in list(logger.handlers):
            if old.get_name() == HANDLER_NAME:
                logger.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # An earlier setup may have pinned backrun's own level; the command line decides now.
    logging.getLogger("backrun").setLevel(logging.NOTSET)
    logging.captureWarnings(True)
    return handler


def remove_logging(handler: logging.Handler) -> None:
    """Undo :func:`configure_logging`: detach ``handler`` and stop capturing warnings."""
    logging.getLogger().removeHandler(handler)
    logging.captureWarnings(False)
