"""The middleware pipeline: a base class to override, and its composition.

A middleware wraps work in layers, the first added outermost:

* ``process(ctx, call_next)`` wraps one attempt, in the worker thread;
* ``enqueue(job, call_next)`` wraps persisting a new job, in the caller's thread;
* ``attempt_finished(ctx, job, error)`` hears how the worker recorded an attempt;
* ``orphan_recovered(job)`` hears that a dead worker's job was rescued;
* ``job_waited(job_id, handler, limit)`` hears that a limit held a due job back;
* ``worker_started(worker)`` / ``worker_stopping(worker)`` bracket a worker.

Exceptions propagate through ``process``; only the worker decides a job's
state. The chains are composed once (per worker start, per engine), and a
middleware that does not override a hook costs nothing on that path.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .context import JobContext
from .jobs import Job

__all__ = ["Middleware", "WorkerHandle", "compose_enqueue", "compose_process", "overrides"]


class WorkerHandle(Protocol):
    """What a middleware may see and do of a worker (``worker_started``/``worker_stopping``).

    :class:`~backrun.worker.Worker` satisfies it; the hooks depend on this
    narrow view so middleware never reaches the worker's plumbing.
    """

    @property
    def id(self) -> str:
        """The worker's id, stamped on the jobs it claims."""
        ...

    @property
    def running_count(self) -> int:
        """Attempts in flight now."""
        ...

    @property
    def processed(self) -> int:
        """Attempts recorded so far."""
        ...

    @property
    def shutdown_timeout(self) -> float:
        """Seconds a stop waits for running attempts."""
        ...

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        ...

    def request_stop(self) -> None:
        """Stop claiming; running attempts go on (signal-safe)."""
        ...

    def force(self) -> None:
        """Release running attempts now (signal-safe)."""
        ...


ProcessNext = Callable[[JobContext], None]
EnqueueNext = Callable[[Job], Job]


class Middleware:
    """Base class: override the hooks you need; the rest pass through."""

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Wrap one attempt. Call ``call_next(ctx)`` to run the rest of the chain."""
        call_next(ctx)

    def enqueue(self, job: Job, call_next: EnqueueNext) -> Job:
        """Wrap persisting a new job; may pass on a changed copy (``job.replace``)."""
        return call_next(job)

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """Hear how an attempt ended: ``job`` is the record as now stored.

        ``job.state`` tells the outcome: SUCCEEDED, SCHEDULED (a retry),
        DEAD, CANCELLED, or QUEUED (released at shutdown). Not called when
        the worker lost the claim before it could record the attempt.
        """

    def orphan_recovered(self, job: Job) -> None:
        """Hear that a dead worker's job was rescued (``job`` as now stored)."""

    def job_deferred(self, job: Job, reason: str) -> None:
        """Hear that a claimed job was given back unrun and uncharged, and why.

        ``reason`` is ``"newer_version"``: its payload version is newer than
        this worker's handler knows (a rolling deploy); a newer worker runs it.
        """

    def job_waited(self, job_id: str, handler: str, limit: str) -> None:
        """Hear that a due job may not start yet: ``limit`` is ``"concurrency"`` or ``"rate"``.

        Called in the worker's claiming thread, once per job per worker process.
        """

    def worker_started(self, worker: WorkerHandle) -> None:
        """Called once when a worker starts, before it claims anything."""

    def worker_stopping(self, worker: WorkerHandle) -> None:
        """Called once when a worker begins to shut down."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """True if ``middleware``'s class overrides ``hook`` of :class:`Middleware`."""
    own: Any = getattr(type(middleware), hook)
    base: Any = getattr(Middleware, hook)
    return bool(own is not base)


def compose_process(middlewares: Sequence[Middleware], terminal: ProcessNext) -> ProcessNext:
    """Build the attempt chain once: ``middlewares[0]`` outermost, ``terminal`` innermost."""
    chain = terminal
    for layer in reversed([m for m in middlewares if overrides(m, "process")]):
        chain = _bind_process(layer, chain)
    return chain


def compose_enqueue(middlewares: Sequence[Middleware], terminal: EnqueueNext) -> EnqueueNext:
    """Build the enqueue chain once: ``middlewares[0]`` outermost, ``terminal`` innermost."""
    chain = terminal
    for layer in reversed([m for m in middlewares if overrides(m, "enqueue")]):
        chain = _bind_enqueue(layer, chain)
    return chain


def _bind_process(layer: Middleware, call_next: ProcessNext) -> ProcessNext:
    process = layer.process
    if _takes_call_next_by_name(process):
        # A partial is called without a Python frame of its own: one fewer per layer per job.
        return functools.partial(process, call_next=call_next)

    def step(ctx: JobContext) -> None:
        process(ctx, call_next)

    return step


def _takes_call_next_by_name(process: Callable[..., None]) -> bool:
    """True if ``process(ctx, call_next=...)`` is the same call as ``process(ctx, call_next)``."""
    try:
        parameters = list(inspect.signature(process).parameters.values())
    except (TypeError, ValueError):
        return False
    return (
        len(parameters) == 2
        and parameters[1].name == "call_next"
        and parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and parameters[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    )


def _bind_enqueue(layer: Middleware, call_next: EnqueueNext) -> EnqueueNext:
    enqueue = layer.enqueue

    def step(job: Job) -> Job:
        return enqueue(job, call_next)

    return step
