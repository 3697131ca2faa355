"""The Engine: where handlers, store, policies and middleware meet.

``enqueue`` runs in the caller's thread and returns once the job is durable;
``run_forever``, ``running`` and ``run_until_idle`` run workers that execute
the jobs. Nothing here needs an event loop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, overload

from .clock import Clock, SystemClock
from .enqueueing import check_queue
from .enqueuer import Enqueuing
from .handlers import Handler, HandlerRegistry, HandlerSpec
from .jobs import Job, JobState
from .limits import LimitOptions
from .middleware import Middleware, compose_enqueue
from .periodic import PeriodicJobs
from .results import JobResults, announce
from .retries import RetryPolicy
from .schedules import Schedule
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_DEPTH
from .settings import find as find_setting
from .settings import warn_deprecated
from .signals import stop_on_signals
from .storage.base import Storage
from .worker import Worker
from .workerinfo import WorkerInfo

if TYPE_CHECKING:
    from .observability.metrics import MetricsServer

__all__ = ["Engine"]

log = logging.getLogger("backrun.engine")

F = TypeVar("F", bound=Callable[..., Any])


def _checked(name: str, value: object) -> Any:
    """``value`` checked by the settings model (its default when ``None``)."""
    setting = find_setting(name)
    if value is None:
        return setting.check(setting.default)
    try:
        return setting.check(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} {exc}") from None


def _default_storage() -> Storage:
    from .storage.jsonfile import JsonFileStorage

    return JsonFileStorage(os.environ.get("BACKRUN_DIR") or ".backrun")


def _default_middleware() -> list[Middleware]:
    from .observability import default_middleware

    return default_middleware()


class Engine(Enqueuing, PeriodicJobs, JobResults):
    """A job engine: register handlers, enqueue jobs, run workers.

    Args:
        storage: where jobs live. Default: a :class:`JsonFileStorage` in
            ``$BACKRUN_DIR``, else ``./.backrun``.
        threads: how many jobs one worker runs at once (its slot threads).
        retry: the default :class:`RetryPolicy` (``RetryPolicy()``: 3 retries,
            a 15-minute timeout).
        queues: the queues this engine's workers take jobs from (default all).
        shutdown_timeout: seconds a stopping worker waits for running jobs
            before releasing them back to QUEUED.
        lease: how long a claim is valid without a heartbeat; heartbeats
            renew it every third of it.
        recovery_interval: seconds between a worker's orphan scans (and store
            housekeeping); a dead worker's jobs are rescued about this long
            after it dies.
        max_crashes: a job whose worker died this many times goes DEAD.
        clock: the time source (tests pass ``backrun.testing.FakeClock``).
        middleware: the middleware stack, outermost first. Default: tracing
            and metrics. Pass ``[]`` for none.
        max_payload_bytes: largest encoded payload ``enqueue`` accepts.
        max_payload_depth: deepest payload nesting ``enqueue`` accepts.
        max_parallelism: the old name of ``threads`` (deprecated).

    The worker settings (``threads``, ``queues``, ``shutdown_timeout``,
    ``lease``, ``recovery_interval``, ``max_crashes``) are checked, and
    default, as :data:`backrun.settings.SETTINGS` says; the CLI, Django and
    Flask read the same model.
    """

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        threads: int | None = None,
        retry: RetryPolicy | None = None,
        queues: Collection[str] | None = None,
        shutdown_timeout: float | None = None,
        lease: timedelta | float | None = None,
        recovery_interval: float | None = None,
        max_crashes: int | None = None,
        clock: Clock | None = None,
        middleware: Sequence[Middleware] | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_payload_depth: int = DEFAULT_MAX_PAYLOAD_DEPTH,
        max_parallelism: int | None = None,
    ) -> None:
        if max_parallelism is not None:
            if threads is not None:
                raise TypeError("give threads= or max_parallelism= (its old name), not both")
            warn_deprecated(["Engine(max_parallelism=) is deprecated: use threads="])
            threads = max_parallelism
        given = {
            "threads": threads,
            "shutdown_timeout": shutdown_timeout,
            "lease": lease,
            "recovery_interval": recovery_interval,
            "max_crashes": max_crashes,
        }
        value = {name: _checked(name, given[name]) for name in given}
        self.storage: Storage = storage if storage is not None else _default_storage()
        self.threads: int = value["threads"]
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self.queues = None if queues is None else frozenset(check_queue(q) for q in queues)
        self.shutdown_timeout: float = value["shutdown_timeout"]
        self.lease = timedelta(seconds=value["lease"])
        self.recovery_interval: float = value["recovery_interval"]
        self.max_crashes: int = value["max_crashes"]
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.max_payload_depth = max_payload_depth
        self.registry = HandlerRegistry()
        self.middleware: list[Middleware] = (
            list(middleware) if middleware is not None else _default_middleware()
        )
        self._workers: set[Worker] = set()
        self._workers_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._enqueue_chain = compose_enqueue(self.middleware, self._persist)
        self._schedules: dict[str, Schedule] = {}

    @property
    def max_parallelism(self) -> int:
        """The old name of :attr:`threads` (deprecated)."""
        warn_deprecated(["Engine.max_parallelism is deprecated: use Engine.threads"], stacklevel=2)
        return self.threads

    @max_parallelism.setter
    def max_parallelism(self, value: int) -> None:
        """Set :attr:`threads` by its old name (deprecated)."""
        warn_deprecated(["Engine.max_parallelism is deprecated: use Engine.threads"], stacklevel=2)
        self.threads = _checked("threads", value)

    def __repr__(self) -> str:
        return (
            f"<Engine storage={type(self.storage).__name__} handlers={len(self.registry.names())}>"
        )

    # -- registration -----------------------------------------------------

    def add_handler(
        self,
        handler: type[Handler[Any]] | Callable[..., Any],
        *,
        factory: Callable[[], Handler[Any]] | None = None,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> HandlerSpec:
        """Register a Handler subclass (built per job by ``factory``) or a function.

        ``name``, ``retry``, ``queue`` and the limits (``max_concurrency``,
        ``concurrency_key``, ``rate_limit``; see README "Limits") apply to
        function handlers; a class sets them as class attributes.

        Raises:
            ValueError: a handler with the same name is registered already.
            TypeError: ``handler`` is neither, or a class needs a factory.
        """
        if isinstance(handler, type):
            if name is not None or retry is not None or queue is not None or any(limits.values()):
                raise TypeError(
                    "set name, retry, queue and limits as class attributes of a Handler"
                )
            return self.registry.add_class(handler, factory)
        if factory is not None:
            raise TypeError("factory= is for Handler classes")
        if queue is not None:
            check_queue(queue)
        return self.registry.add_function(handler, name=name, retry=retry, queue=queue, **limits)

    @overload
    def handler(self, fn: F, /) -> F: ...
    @overload
    def handler(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> Callable[[F], F]: ...
    def handler(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        **limits: Unpack[LimitOptions],
    ) -> F | Callable[[F], F]:
        """Register a function handler: ``@engine.handler`` or ``@engine.handler(name=...)``.

        The payload type is the first parameter's annotation; the function
        takes ``(payload)`` or ``(payload, ctx)``. It is returned unchanged.
        """

        def register(target: F) -> F:
            self.add_handler(target, name=name, retry=retry, queue=queue, **limits)
            return target

        return register(fn) if fn is not None else register

    def add_handlers_from_package(self, package: str) -> list[str]:
        """Import every module of ``package`` and register the handlers defined there.

        Handler subclasses and functions marked with ``@backrun.handler`` are
        registered; those registered already (e.g. with a factory) are kept.

        Returns:
            The names registered by this call.
        """
        return [spec.name for spec in self.registry.add_package(package)]

    def add_middleware(self, middleware: Middleware) -> None:
        """Append a middleware (innermost so far); workers started later use it."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"{middleware!r} is not a backrun.Middleware")
        self.middleware.append(middleware)
        self._enqueue_chain = compose_enqueue(self.middleware, self._persist)

    def tick_created(self, job: Job) -> None:
        """A scheduler added a tick's job: wake this process's idle workers."""
        self._wake(job)

    # -- inspection and control ------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """Return the job with this id, or ``None``.

        Raises:
            ValueError: ``job_id`` is not a well-formed job id.
        """
        return self.storage.get(job_id)

    def jobs(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return up to ``limit`` jobs, oldest first, filtered by state and queue."""
        return self.storage.find(state=state, queue=queue, limit=limit)

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Return the number of jobs per ``(queue, state)``."""
        return self.storage.counts()

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; a running one is asked to stop (``ctx.cancelled`` is set).

        Raises:
            JobNotFound: no job has this id.
        """
        job = self.storage.cancel(job_id, now=self.clock.now())
        announce(job)
        if job.state is JobState.RUNNING:
            with self._workers_lock:
                workers = list(self._workers)
            for worker in workers:
                worker.cancel_local(job.id)
        return job

    def retry(self, job_id: str) -> Job:
        """Run a DEAD, CANCELLED or SCHEDULED job again now.

        Raises:
            JobNotFound: no job has this id.
            ValueError: the job is queued, running or succeeded.
        """
        job = self.storage.requeue(job_id, now=self.clock.now())
        self._wake(job)
        return job

    # -- operations: live workers and paused queues ---------------------------

    def workers(self) -> list[WorkerInfo]:
        """Return the live workers of every process on this store, by id.

        A worker shows up once it has started and disappears when it stops,
        or within one ``recovery_interval`` after it dies.
        """
        return self.storage.live_workers(now=self.clock.now())

    def pause(self, queue: str) -> bool:
        """Stop every worker on this store from taking jobs of ``queue``.

        Enqueues still succeed and running jobs finish; the pause is kept in
        the store until :meth:`resume`, across restarts.

        Returns:
            False when the queue was paused already.

        Raises:
            ValueError: ``queue`` is not a valid queue name.
        """
        return self.storage.pause_queue(check_queue(queue), now=self.clock.now())

    def resume(self, queue: str) -> bool:
        """Let workers take jobs of ``queue`` again (within one poll interval elsewhere).

        Returns:
            False when the queue was not paused.
        """
        resumed = self.storage.resume_queue(check_queue(queue))
        self._wake_all()
        return resumed

    def paused(self) -> frozenset[str]:
        """Return the names of the paused queues."""
        return self.storage.paused_queues()

    # -- running ------------------------------------------------------------

    def worker(self, *, queues: Collection[str] | None = None) -> Worker:
        """Build (but do not start) a worker for this engine."""
        return Worker(
            self,
            queues=self.queues if queues is None else frozenset(check_queue(q) for q in queues),
            threads=self.threads,
            shutdown_timeout=self.shutdown_timeout,
            lease=self.lease,
            recovery_interval=self.recovery_interval,
            max_crashes=self.max_crashes,
        )

    def _start(self, worker: Worker) -> None:
        with self._workers_lock:
            self._workers.add(worker)
        try:
            worker.start()
        except BaseException:
            self._forget(worker)
            raise

    def _forget(self, worker: Worker) -> None:
        with self._workers_lock:
            self._workers.discard(worker)

    @contextmanager
    def running(self, *, queues: Collection[str] | None = None) -> Iterator[Worker]:
        """Run a worker in background threads of this process for the ``with`` block.

        On exit the worker stops gracefully (waiting up to ``shutdown_timeout``).
        """
        worker = self.worker(queues=queues)
        self._start(worker)
        try:
            yield worker
        finally:
            try:
                worker.stop()
            finally:
                self._forget(worker)

    def run_until_idle(
        self, timeout: float = 10.0, *, queues: Collection[str] | None = None
    ) -> int:
        """Run every due job (and any they enqueue), then return.

        Jobs scheduled for later stay SCHEDULED. Useful in tests and scripts.

        Returns:
            How many attempts ran.

        Raises:
            TimeoutError: jobs were still running or due after ``timeout`` seconds
                (running ones are released back to QUEUED).
        """
        worker = self.worker(queues=queues)
        self._start(worker)
        try:
            return worker.wait_idle(timeout)
        finally:
            try:
                worker.stop(timeout=0)
            finally:
                self._forget(worker)

    def run_forever(self, *, queues: Collection[str] | None = None) -> bool:
        """Run a worker until SIGTERM or SIGINT (Ctrl+C), then drain gracefully.

        The first signal stops claiming and waits up to ``shutdown_timeout``
        for running jobs, then releases the rest; a second SIGINT releases
        them at once. Signal handlers are installed only in the main thread;
        elsewhere, call :meth:`shutdown` from another thread to stop it.

        Returns:
            True if every running job finished; False if some were released.
        """
        worker = self.worker(queues=queues)
        with stop_on_signals(worker) as interrupts:
            self._stop_requested.clear()
            self._start(worker)
            try:
                while not worker.stopping:
                    self._stop_requested.wait(0.25)
                log.info("stopping: finishing running jobs, claiming no more")
                drained = worker.stop()
                if interrupts.forced:
                    log.warning("second interrupt: running jobs were released")
                return drained
            finally:
                self._forget(worker)

    def shutdown(self) -> None:
        """Ask this engine's workers to stop, as SIGTERM would (from any thread)."""
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.request_stop()
        self._stop_requested.set()

    def serve_metrics(self, port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve Prometheus metrics at ``http://addr:port/metrics`` from a background thread.

        Binds to 127.0.0.1 unless told otherwise; ``port=0`` picks a free port.
        Returns the server (``.url``, ``.close()``).
        """
        from .observability.metrics import serve_metrics

        return serve_metrics(self, port, addr=addr)

    def close(self) -> None:
        """Close the store. Stop workers first."""
        self.storage.close()
