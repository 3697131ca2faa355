"""A ``django.tasks`` backend that runs ``@task`` functions on backrun.

::

    TASKS = {"default": {"BACKEND": "backrun.contrib.django.tasks.BackrunBackend"}}

Uses Django's own ``django.tasks`` (Django 6.0+) when present, else the
``django-tasks`` backport (Django 5.2 / Python 3.11). Each task call is one
backrun job of the handler ``django.task`` whose payload names the task and
carries its (JSON) arguments; ``run_after`` becomes the job's ``at``,
``priority`` and ``queue_name`` carry over. The worker is
``manage.py backrun_worker``.

Honest capabilities: deferred runs, priorities, async task functions (run
with ``async_to_sync``) and ``get_result`` from any process. Return values
(JSON, as Django requires) are stored with the job's success, in the same
write, so ``get_result(id).return_value`` works from any process on the
store and lives as long as the job; no cache is needed (``RESULT_CACHE`` and
``RESULT_TTL`` are ignored). A return value larger than the engine's
``max_payload_bytes`` fails the task. A task is tried once unless
``OPTIONS["MAX_RETRIES"]`` allows retries (``task_finished`` then fires once,
after the last attempt). Signals: ``task_enqueued`` in the caller,
``task_started`` and ``task_finished`` in the worker.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

from django.utils import timezone

from backrun.context import JobContext
from backrun.enqueueing import QUEUE_NAME
from backrun.jobs import Job, JobState
from backrun.retries import RetryPolicy

__all__ = ["TASK_HANDLER", "BackrunBackend", "TaskCall", "run_task", "task_retry_policy"]

TASK_HANDLER = "django.task"


def _tasks_module(name: str) -> ModuleType:
    """``django.tasks.<name>`` (Django 6), else ``django_tasks.<name>`` (the backport)."""
    try:
        return importlib.import_module(f"django.tasks.{name}")
    except ImportError:
        return importlib.import_module(f"django_tasks.{name}")


def _tasks_root() -> ModuleType:
    try:
        return importlib.import_module("django.tasks")
    except ImportError:
        return importlib.import_module("django_tasks")


_root: Any = _tasks_root()
_base: Any = _tasks_module("base")
_backends: Any = _tasks_module("backends.base")
_signals: Any = _tasks_module("signals")
_exceptions: Any = _tasks_module("exceptions")
USING_DJANGO_TASKS = _root.__name__ == "django.tasks"
"""True when Django's own ``django.tasks`` is in use, False for the backport."""


@dataclass(frozen=True)
class TaskCall:
    """The payload of a ``django.task`` job: which task, with which arguments.

    Attributes:
        task: the task's import path (``module.function``).
        args: its positional arguments (JSON).
        kwargs: its keyword arguments (JSON).
        backend: the ``TASKS`` alias it was enqueued through.
    """

    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    backend: str = "default"


def _json(value: Any) -> Any:
    """Round-trip through JSON, as Django's backends do, so what runs is what was stored."""
    return json.loads(json.dumps(value))


_STATUS = {
    JobState.SCHEDULED: "READY",
    JobState.QUEUED: "READY",
    JobState.RUNNING: "RUNNING",
    JobState.SUCCEEDED: "SUCCESSFUL",
    JobState.DEAD: "FAILED",
    JobState.CANCELLED: "FAILED",
}


def _error_path(type_name: str) -> str:
    return type_name if "." in type_name else f"builtins.{type_name}"


class BackrunBackend(_backends.BaseTaskBackend):  # type: ignore[misc]
    """Run Django tasks as backrun jobs on the project's engine (``get_engine()``).

    ``OPTIONS``: ``MAX_RETRIES`` (default 0). Return values are read from
    the store (``Job.result``); the old ``RESULT_CACHE`` and ``RESULT_TTL``
    options are accepted and ignored.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.max_retries = int(self.options.get("MAX_RETRIES", 0))

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Store one backrun job for this call; return its ``TaskResult`` (READY)."""
        from backrun.contrib.django import get_engine

        self.validate_task(task)
        call = TaskCall(
            task=task.module_path,
            args=_json(list(args)),
            kwargs=_json(dict(kwargs)),
            backend=self.alias,
        )
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):  # USE_TZ = False
            run_after = timezone.make_aware(run_after)
        engine = get_engine()
        job = engine.enqueue(
            TASK_HANDLER,
            call,
            at=run_after,
            queue=task.queue_name,
            priority=task.priority,
        )
        result = self._result(task, job)
        _signals.task_enqueued.send(type(self), task_result=result)
        return result

    def check(self, **kwargs: Any) -> list[Any]:
        """Django's backend checks, plus queue names backrun can store."""
        from django.core import checks

        found = list(super().check(**kwargs))
        found.extend(
            checks.Error(
                f"TASKS[{self.alias!r}]: queue name {queue!r} is not valid for backrun",
                hint="Queue names are 1-64 characters of A-Z a-z 0-9 _ . -",
                id="backrun.E002",
            )
            for queue in sorted(self.queues)
            if not isinstance(queue, str) or QUEUE_NAME.match(queue) is None
        )
        return found

    def get_result(self, result_id: str) -> Any:
        """The ``TaskResult`` of a job, as the store has it now.

        Raises:
            TaskResultDoesNotExist: no such job, or not a Django task's job.
        """
        from backrun.contrib.django import get_engine

        try:
            job = get_engine().get(result_id)
        except ValueError:
            job = None
        if job is None or job.handler != TASK_HANDLER:
            raise _exceptions.TaskResultDoesNotExist(result_id)
        try:
            task = _import_task(str(job.payload.get("task", "")))
        except ImportError as exc:
            raise _exceptions.TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
        return self._result(task, job)

    def _result(self, task: Any, job: Job, *, status: str | None = None) -> Any:
        payload = job.payload
        state = status or _STATUS[job.state]
        result = _base.TaskResult(
            task=task,
            id=job.id,
            status=_base.TaskResultStatus[state],
            enqueued_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at if job.finished else None,
            last_attempted_at=job.started_at,
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            backend=self.alias,
            errors=[
                _base.TaskError(exception_class_path=_error_path(e.type), traceback=e.traceback)
                for e in job.errors
            ],
            worker_ids=[job.worker_id or "unknown"] * job.attempts,
        )
        if state == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", job.result)
        return result


def task_retry_policy() -> RetryPolicy:
    """The retry policy of task jobs: ``OPTIONS["MAX_RETRIES"]`` of the backrun backends.

    One handler runs every backend's tasks, so the largest value applies.
    """
    from django.conf import settings

    retries = [
        int(params.get("OPTIONS", {}).get("MAX_RETRIES", 0))
        for params in (getattr(settings, "TASKS", None) or {}).values()
        if params.get("BACKEND") == f"{__name__}.BackrunBackend"
    ]
    return RetryPolicy(max_retries=max(retries, default=0))


def _import_task(path: str) -> Any:
    from django.utils.module_loading import import_string

    target = import_string(path)
    if not isinstance(target, _base.Task):
        raise ImportError(f"{path} is not a django task (decorate it with @task)")
    return target


def _finished(result: Any, status: str, finished: datetime) -> None:
    object.__setattr__(result, "status", _base.TaskResultStatus[status])
    object.__setattr__(result, "finished_at", finished)


def run_task(payload: TaskCall, ctx: JobContext) -> Any:
    """The backrun handler behind every Django task: import it, call it, signal.

    Returns the task's return value (as JSON), which backrun stores with the
    job's success: ``get_result(...).return_value`` reads it from there.
    """
    backend = _root.task_backends[payload.backend]
    task = _import_task(payload.task)
    job = ctx.job
    result = backend._result(task, job, status="RUNNING")
    sender = type(backend)
    _signals.task_started.send(sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(
                _base.TaskContext(task_result=result), *payload.args, **payload.kwargs
            )
        else:
            value = task.call(*payload.args, **payload.kwargs)
        value = _json(value)
    except BaseException as exc:
        if ctx.attempt >= job.max_attempts:
            from backrun.attempts import describe_error

            error = describe_error(exc, ctx.attempt, ctx.engine.clock.now())
            result.errors.append(
                _base.TaskError(
                    exception_class_path=_error_path(error.type), traceback=error.traceback
                )
            )
            _finished(result, "FAILED", ctx.engine.clock.now())
            _signals.task_finished.send(sender, task_result=result)
        raise
    object.__setattr__(result, "_return_value", value)
    _finished(result, "SUCCESSFUL", ctx.engine.clock.now())
    _signals.task_finished.send(sender, task_result=result)
    return value
