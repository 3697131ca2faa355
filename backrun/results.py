"""Waiting for jobs to finish, and reading what they returned.

``engine.wait`` and ``engine.result`` (see :class:`backrun.Engine`) sleep on
an event, never on a fixed tick: the event is set when a worker of this
process records a job's end (:func:`announce`), and when the store's
:meth:`~backrun.storage.base.Storage.subscribe` callback fires. A job that
another process finishes is seen at the store's ``poll_interval`` at the
latest (the JSON store: 0.2 s; PostgreSQL: 1 s); a store without one
(memory) lives in this process only, so every change to it is announced.

Blocking and thread-safe: from asyncio use ``asyncio.to_thread(engine.wait,
job_id, 30)``, from trio ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .handlers import HandlerRegistry
from .jobs import Job, JobError, JobState
from .storage.base import Storage

__all__ = ["JobFailed", "JobResults", "announce", "result_of", "wait_for"]


class JobFailed(Exception):
    """``engine.result()`` of a job that ended DEAD or CANCELLED.

    Attributes:
        job: the job as stored.
        error: its last error (``None`` for a job cancelled before it ran).
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.error: JobError | None = job.last_error
        why = "" if self.error is None else f": {self.error.type}: {self.error.message}"
        super().__init__(f"job {job.id} ({job.handler}) is {job.state.value}{why}")


class _Board:
    """Events of the jobs someone in this process waits for, set when they may have ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[threading.Event]] = {}

    def watch(self, job_id: str, event: threading.Event) -> Callable[[], None]:
        """Set ``event`` when ``job_id`` is announced; return the function that stops it."""
        with self._lock:
            self._waiting.setdefault(job_id, []).append(event)

        def forget() -> None:
            with self._lock:
                events = self._waiting.get(job_id)
                if events is not None:
                    events.remove(event)
                    if not events:
                        del self._waiting[job_id]

        return forget

    def announce(self, job_id: str) -> None:
        """Set the events of everyone waiting for ``job_id``."""
        if not self._waiting:  # the common case: nobody waits; no lock taken
            return
        with self._lock:
            events = list(self._waiting.get(job_id, ()))
        for event in events:
            event.set()


_board = _Board()
_FINISHED = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


def announce(job: Job) -> None:
    """Tell this process's waiters that ``job`` was written (workers call it per outcome)."""
    if _board._waiting and job.state in _FINISHED:  # per outcome: nobody waits, usually
        _board.announce(job.id)


def wait_for(storage: Storage, job_id: str, timeout: float | None) -> Job:
    """Block until the job is SUCCEEDED, DEAD or CANCELLED; return it as stored.

    Raises:
        TimeoutError: it had not finished after ``timeout`` seconds.
        JobNotFound: no job has this id.
        ValueError: ``job_id`` is not a well-formed id.
    """
    from .errors import JobNotFound

    if timeout is not None and (timeout != timeout or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    event = threading.Event()
    forget = _board.watch(job_id, event)
    unsubscribe = storage.subscribe(event.set)
    try:
        while True:
            event.clear()
            job = storage.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.finished:
                return job
            pause: float | None = storage.poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"job {job_id} is still {job.state.value} after {timeout:g} s"
                    )
                pause = left if pause is None else min(pause, left)
            event.wait(pause)
    finally:
        unsubscribe()
        forget()


def result_of(job: Job, load: Callable[[Any], Any] | None) -> Any:
    """The return value of a finished job, validated by ``load`` when given.

    Raises:
        JobFailed: the job is DEAD or CANCELLED.
    """
    if job.state is not JobState.SUCCEEDED:
        raise JobFailed(job)
    return job.result if load is None else load(job.result)


class JobResults:
    """``wait`` and ``result``: a mixin of :class:`backrun.Engine`, kept apart from it."""

    storage: Storage
    registry: HandlerRegistry

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is SUCCEEDED, DEAD or CANCELLED; return it as stored.

        Wakes when a worker of this process records the job's end or the store
        announces a change; a job finished by another process is seen within
        the store's ``poll_interval``. Thread-safe; from asyncio call it through
        ``asyncio.to_thread``, from trio through ``trio.to_thread.run_sync``.

        Args:
            job_id: the job's id.
            timeout: seconds to wait at most (``None``: for ever).

        Raises:
            TimeoutError: the job had not finished within ``timeout``.
            JobNotFound: no job has this id.
            ValueError: ``job_id`` is malformed, or ``timeout`` negative.
        """
        return wait_for(self.storage, job_id, timeout)

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job (as :meth:`wait`) and return what its handler returned.

        The stored result is validated back into the handler's return type
        (a pydantic model comes back as that model). A handler not registered
        in this process gives the stored JSON form.

        Raises:
            JobFailed: the job ended DEAD or CANCELLED (``.error`` is its last error).
            TimeoutError: the job had not finished within ``timeout``.
            JobNotFound: no job has this id.
        """
        job = wait_for(self.storage, job_id, timeout)
        spec = self.registry.get(job.handler)
        return result_of(job, None if spec is None else spec.load_result)
