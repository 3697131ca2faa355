"""Prometheus metrics: the middleware and the ``/metrics`` endpoint (queue gauges: queue_collector).

Depends on prometheus_client only. Nothing is registered at import: metric
objects are created the first time a middleware (or :func:`serve_metrics`)
uses a registry, once per registry, so several engines in one process, or
tests with a fresh ``CollectorRegistry`` each, never hit "Duplicated
timeseries".
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from backrun.clock import Clock
from backrun.context import JobContext
from backrun.errors import JobTimeout
from backrun.jobs import Job, JobState, Outcome
from backrun.middleware import EnqueueNext, Middleware, ProcessNext
from backrun.schedules import Schedule
from backrun.storage.base import Storage

from ._inflight import InflightTable
from ._prometheus_fast import Add, adder, observer
from .queue_collector import QueueCollector, register_queue_collector


class MetricsSource(Protocol):
    """What :func:`serve_metrics` reads of an engine (:class:`~backrun.engine.Engine` is one)."""

    @property
    def storage(self) -> Storage:
        """The engine's store (queue gauges)."""
        ...

    @property
    def clock(self) -> Clock:
        """The engine's clock."""
        ...

    @property
    def middleware(self) -> Sequence[Middleware]:
        """The engine's middleware (its MetricsMiddleware's registry is reused)."""
        ...

    def schedules(self) -> list[Schedule]:
        """The engine's schedules (reported by the schedule collector)."""
        ...


__all__ = [
    "DEFAULT_BUCKETS",
    "MetricsMiddleware",
    "MetricsServer",
    "MetricsSource",
    "QueueCollector",
    "register_queue_collector",
    "serve_metrics",
]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
)  # fmt: skip
"""Histogram buckets, in seconds: 5 ms to 30 minutes."""

_LABELS = ("queue", "handler")
_COUNTED = (Outcome.SUCCEEDED, Outcome.RETRIED, Outcome.DEAD, Outcome.CANCELLED)
_OUTCOMES = (*_COUNTED, "failed")
_FAILED = frozenset({JobState.SCHEDULED, JobState.DEAD})
_OUTCOME_OF = {state: Outcome.of(state) for state in JobState if state is not JobState.RUNNING}


class _Children:
    """The label children of one ``(queue, handler)``: looked up once, then reused."""

    __slots__ = (
        "_adds",
        "add_running",
        "duration",
        "enqueued",
        "failed",
        "observe_duration",
        "observe_wait",
        "orphans",
        "outcomes",
        "queue_wait",
        "running",
        "stuck",
    )

    def __init__(self, metrics: _Metrics, queue: str, handler: str) -> None:
        self.enqueued = metrics.enqueued.labels(queue, handler)
        completed = {o: metrics.completed.labels(queue, handler, o) for o in _OUTCOMES}
        self.failed = completed["failed"]
        self.outcomes: dict[JobState, Counter] = {
            state: completed[outcome]
            for state, outcome in _OUTCOME_OF.items()
            if outcome in _COUNTED
        }
        self.duration = metrics.duration.labels(queue, handler)
        self.queue_wait = metrics.queue_wait.labels(queue, handler)
        self.running = metrics.running.labels(queue, handler)
        self.orphans = metrics.orphans.labels(queue, handler)
        self.stuck = metrics.stuck.labels(queue, handler)
        self.add_running = adder(self.running)
        self.observe_duration = observer(self.duration)
        self.observe_wait = observer(self.queue_wait)
        failed = adder(self.failed)
        self._adds: dict[JobState, tuple[Add, Add | None]] = {
            state: (adder(child), failed if state in _FAILED else None)
            for state, child in self.outcomes.items()
        }

    def count(self, state: JobState) -> None:
        """Count an attempt (or a rescue) that left the job in ``state``."""
        adds = self._adds.get(state)
        if adds is not None:
            adds[0](1.0)
            if adds[1] is not None:
                adds[1](1.0)


class _Metrics:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.enqueued = Counter(
            "backrun_jobs_enqueued",
            "Jobs enqueued by this process.",
            _LABELS,
            registry=registry,
        )
        self.completed = Counter(
            "backrun_jobs_completed",
            "Attempts recorded by this process, by outcome: succeeded; retried (failed, will "
            "run again); dead (failed, no attempts left, or its worker kept crashing); "
            "cancelled; and failed, counting every failed attempt (= retried + dead).",
            (*_LABELS, "outcome"),
            registry=registry,
        )
        self.duration = Histogram(
            "backrun_job_duration_seconds",
            "How long each attempt's handler ran (up to its timeout, if it timed out).",
            _LABELS,
            buckets=buckets,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "backrun_job_queue_wait_seconds",
            "Time from a job's due time (run_at) to the start of its attempt.",
            _LABELS,
            buckets=buckets,
            registry=registry,
        )
        self.running = Gauge(
            "backrun_jobs_running",
            "Handlers running now in this process (timed-out ones until they return).",
            _LABELS,
            registry=registry,
            multiprocess_mode="livesum",  # --processes: summed over living children
        )
        self.orphans = Counter(
            "backrun_orphans_recovered",
            "Jobs of dead workers rescued by this process.",
            _LABELS,
            registry=registry,
        )
        self.deferred = Counter(
            "backrun_jobs_deferred",
            "Claimed jobs given back unrun and uncharged, by reason (newer_version: "
            "stored by a newer deploy than this worker's).",
            (*_LABELS, "reason"),
            registry=registry,
        )
        self.stuck = Gauge(
            "backrun_stuck_threads",
            "Threads whose attempt timed out but whose handler has not returned yet.",
            _LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.limited = Counter(
            "backrun_limited",
            "Times a due job had to wait for its handler's limit (concurrency or rate), "
            "counted once per job by each worker process that found it waiting.",
            ("handler", "limit"),
            registry=registry,
        )
        self.limited_running = Gauge(
            "backrun_limited_running",
            "Jobs of handlers with a concurrency or rate limit running now in this process.",
            ("handler",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[str, str], _Children] = {}

    def children(self, queue: str, handler: str) -> _Children:
        """The labelled series of one (queue, handler), created once and cached."""
        key = (queue, handler)
        children = self._children.get(key)
        if children is None:
            # All series of a new label pair start at zero, so rates, ratios
            # and alerts have data before the first failure or rescue.
            children = self._children.setdefault(key, _Children(self, queue, handler))
        return children


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry, buckets: tuple[float, ...]) -> _Metrics:
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = _Metrics(registry, buckets)
        elif metrics.buckets != buckets:
            raise ValueError(
                "backrun metrics already exist in this registry with other buckets "
                f"({metrics.buckets}); pass the same buckets, or another registry"
            )
        return metrics


class MetricsMiddleware(Middleware):
    """Counts jobs and times attempts in Prometheus metrics.

    Every metric has ``queue`` and ``handler`` labels:
    ``backrun_jobs_enqueued_total``, ``backrun_jobs_completed_total`` (plus
    ``outcome``), ``backrun_job_duration_seconds``,
    ``backrun_job_queue_wait_seconds``, ``backrun_jobs_running``,
    ``backrun_orphans_recovered_total`` and ``backrun_stuck_threads``;
    for handlers with limits, ``backrun_limited_total`` (``handler``,
    ``limit``: times a job waited) and ``backrun_limited_running`` (``handler``).
    An attempt released at shutdown (the job goes back to QUEUED) is not
    counted: it will run again. Queue depth and lag come from
    :class:`QueueCollector`, registered by :func:`serve_metrics`.

    Args:
        registry: where the metrics live; default ``prometheus_client.REGISTRY``.
            Middlewares sharing a registry share its metrics.
        buckets: histogram upper bounds in seconds, for durations and waits.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._metrics = _metrics_for(self.registry, tuple(float(b) for b in buckets))
        self._inflight: InflightTable[_Children] = InflightTable()

    def enqueue(self, job: Job, call_next: EnqueueNext) -> Job:
        """Count the job once it is persisted."""
        job = call_next(job)
        self._metrics.children(job.queue, job.handler).enqueued.inc()
        return job

    def process(self, ctx: JobContext, call_next: ProcessNext) -> None:
        """Observe the queue wait; count the handler as running while it runs."""
        job = ctx.job
        children = self._metrics.children(job.queue, job.handler)
        if job.started_at is not None and job.run_at is not None:
            wait = (job.started_at - job.run_at).total_seconds()
            children.observe_wait(wait if wait > 0.0 else 0.0)
        children.add_running(1.0)
        limited = self._metrics.limited_running.labels(job.handler) if job.limited else None
        if limited is not None:
            limited.inc()
        entry = self._inflight.begin(ctx, children)
        try:
            call_next(ctx)
        finally:
            children.add_running(-1.0)
            if limited is not None:
                limited.dec()
            if self._inflight.handler_returned(entry) and entry.stuck:
                children.stuck.dec()

    def attempt_finished(self, ctx: JobContext, job: Job, error: BaseException | None) -> None:
        """Count the outcome and observe the duration of a recorded attempt."""
        entry, _ = self._inflight.attempt_finished(ctx, timed_out=isinstance(error, JobTimeout))
        if job.state is JobState.QUEUED:
            return
        if entry is None:
            self._metrics.children(job.queue, job.handler).count(job.state)
            return
        children = entry.value
        children.count(job.state)
        end = entry.end if entry.end is not None else time.perf_counter()
        children.observe_duration(end - entry.start)
        if entry.stuck:
            children.stuck.inc()

    def orphan_recovered(self, job: Job) -> None:
        """Count a rescue; a job that ends DEAD or CANCELLED by it counts as such."""
        children = self._metrics.children(job.queue, job.handler)
        children.orphans.inc()
        children.count(job.state)

    def job_deferred(self, job: Job, reason: str) -> None:
        """Count a job given back for a newer worker."""
        self._metrics.deferred.labels(job.queue, job.handler, reason).inc()

    def job_waited(self, job_id: str, handler: str, limit: str) -> None:
        """Count a job held back by a limit (``backrun_limited_total``)."""
        self._metrics.limited.labels(handler, limit).inc()

    def worker_stopping(self, worker: object) -> None:
        """Forget attempts whose outcome was never recorded (their claim was lost)."""
        self._inflight.drain(min_age=5.0)


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, collector: QueueCollector,
                 storage: Storage, registry: CollectorRegistry) -> None:  # fmt: skip
        self._server = server
        self._thread = thread
        self._collector = collector
        self._storage = storage
        self.registry = registry
        self.addr: str = server.server_address[0]
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        """The metrics URL, e.g. ``http://127.0.0.1:9464/metrics``."""
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and stop reporting the store. Idempotent."""
        self._collector.remove(self._storage)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    engine_or_storage: MetricsSource | Storage,
    port: int,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve Prometheus metrics over HTTP at ``http://addr:port/metrics``.

    The store's queues are reported at each scrape (:class:`QueueCollector`).
    The registry defaults to that of the engine's :class:`MetricsMiddleware`,
    else the global one. ``port=0`` picks a free port (see
    :attr:`MetricsServer.port`). Binds to 127.0.0.1 unless told otherwise.
    """
    if isinstance(engine_or_storage, Storage):
        storage, clock = engine_or_storage, None
    else:
        storage, clock = engine_or_storage.storage, engine_or_storage.clock
        if registry is None:
            for layer in engine_or_storage.middleware:
                if isinstance(layer, MetricsMiddleware):
                    registry = layer.registry
                    break
    registry = registry if registry is not None else REGISTRY
    collector = register_queue_collector(storage, registry=registry, clock=clock)
    if not isinstance(engine_or_storage, Storage):
        from .schedule_collector import register_schedule_collector

        register_schedule_collector(engine_or_storage, registry=registry)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, collector, storage, registry)
