"""The scheduler loop every worker runs: turn each due tick into one job.

Every worker process schedules; nothing elects a leader. A tick's job id is
derived from the schedule's name and the tick time, and the store accepts an
id once (:meth:`Storage.add_once`), so concurrent creators of one tick collide
in the store and exactly one job exists.

Which ticks a process creates (the misfire rule):

* A process that has been scheduling since before a tick creates it when it
  comes, or up to ``LAG_LIMIT`` late if it was slow (a busy machine, a pause).
  Ticks it passed by more than that were missed, as after downtime.
* A process that starts (or a schedule just added) looks at the latest tick
  only. If it came at most ``START_GRACE`` (1 s, or a quarter of the interval
  when that is shorter) ago, it is on time and created.
  Otherwise it was missed while no worker ran: ``misfire="once"`` creates that
  one tick as the catch-up job, ``"skip"`` creates nothing. Older missed
  ticks are never created, so downtime costs at most one job per schedule.
* No process creates a tick older than half of the store's ``retention``:
  a tick whose job ran and was purged must not come back. Purging a tick's
  job by hand before the schedule's next tick may let a worker that starts in
  between re-create it (``misfire="once"``).

The loop sleeps until the earliest next tick (it never polls), wakes when the
clock jumps, a schedule is added, or the worker stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from .clock import Clock
from .enqueueing import build_job
from .handlers import HandlerRegistry
from .jobs import Job
from .middleware import Middleware, compose_enqueue
from .retries import RetryPolicy
from .schedules import Schedule
from .storage.base import Storage
from .uniqueness import stamp

__all__ = [
    "LAG_LIMIT",
    "START_GRACE",
    "ScheduleHost",
    "Scheduler",
    "last_tick_at",
    "ticks_due",
]


class ScheduleHost(Protocol):
    """What the scheduler uses of its engine: schedules, store, clock, enqueue settings.

    :class:`~backrun.engine.Engine` satisfies it; the scheduler builds a tick's
    job as ``enqueue`` would (same validation, same middleware).
    """

    @property
    def storage(self) -> Storage:
        """Where tick jobs are added."""
        ...

    @property
    def clock(self) -> Clock:
        """The time ticks are judged by."""
        ...

    @property
    def middleware(self) -> Sequence[Middleware]:
        """The enqueue middleware a tick's job passes through."""
        ...

    @property
    def registry(self) -> HandlerRegistry:
        """The registered handlers."""
        ...

    @property
    def retry_policy(self) -> RetryPolicy:
        """The default retry policy of tick jobs."""
        ...

    @property
    def max_payload_bytes(self) -> int:
        """The payload size limit of tick jobs."""
        ...

    @property
    def max_payload_depth(self) -> int:
        """The payload nesting limit of tick jobs."""
        ...

    def schedule_list(self) -> list[Schedule]:
        """The declared schedules."""
        ...

    def tick_created(self, job: Job) -> None:
        """Told after a tick's job was added, to wake idle workers."""
        ...


log = logging.getLogger("backrun.scheduler")

LAG_LIMIT = timedelta(seconds=60)
START_GRACE = timedelta(seconds=1)
_MAX_SLEEP = 60.0
_RETRY_AFTER = 1.0
_LOOKBACK = 64


class _TickExists(Exception):
    """Another process created this tick first."""


def ticks_due(
    schedule: Schedule, cursor: datetime | None, now: datetime, horizon: timedelta | None
) -> list[datetime]:
    """The ticks to create at ``now``, oldest first (see the module's rule).

    Args:
        schedule: the schedule.
        cursor: the latest tick this process handled already, ``None`` at start.
        now: the current time.
        horizon: the store's retention (ticks older than half of it are never
            created), or ``None`` when jobs are not purged by age.
    """
    latest = schedule.latest_tick(now)
    if cursor is None:
        grace = min(START_GRACE, (schedule.next_tick(latest) - latest) / 4)
        on_time = now - latest <= grace
        ticks = [latest] if on_time or schedule.misfire == "once" else []
    elif latest <= cursor:
        ticks = []
    else:
        window = max(cursor, now - LAG_LIMIT)
        ticks = schedule.ticks_between(window, now)
        missed = schedule.next_tick(cursor) <= window
        if not ticks and missed and schedule.misfire == "once":
            ticks = [latest]
    if horizon is not None:
        oldest = now - horizon / 2
        ticks = [t for t in ticks if t > oldest]
    return ticks


def last_tick_at(storage: Storage, schedule: Schedule, now: datetime) -> datetime | None:
    """The latest tick at or before ``now`` whose job exists, looking back 64 ticks at most."""
    tick = schedule.latest_tick(now)
    for _ in range(_LOOKBACK):
        if storage.get(schedule.tick_id(tick)) is not None:
            return tick
        previous = schedule.latest_tick(tick - timedelta(microseconds=1))
        if previous >= tick:  # pragma: no cover - defensive: time must go back
            return None
        tick = previous
    return None


class Scheduler:
    """Creates the jobs of an engine's schedules from one thread of a worker.

    Args:
        engine: the engine whose schedules, store, clock and middleware are used.
        worker_id: for the thread's name and log lines.
    """

    def __init__(self, engine: ScheduleHost, worker_id: str) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.created = 0
        self._cursors: dict[str, datetime] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None
        self._persist = compose_enqueue(engine.middleware, self._add_once)

    def start(self) -> None:
        """Start the thread if the engine has schedules (else :meth:`wake` starts it later)."""
        with self._lock:
            if self._thread is not None or self._stopping or not self.engine.schedule_list():
                return
            self._unsubscribe = self.engine.clock.subscribe(self._wake.set)
            self._thread = threading.Thread(
                target=self._run, name=f"backrun-scheduler-{self.worker_id}", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Look at the schedules again now (one was added, or time jumped)."""
        self.start()
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        with self._lock:
            self._stopping = True
            thread, self._thread = self._thread, None
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        self._wake.set()
        if unsubscribe is not None:
            unsubscribe()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                sleep = self.run_once()
            except Exception:
                log.exception("scheduler round failed")
                sleep = _RETRY_AFTER
            if sleep > 0:
                self._wake.wait(sleep)

    def run_once(self) -> float:
        """Create every due tick's job; return the seconds until the next tick."""
        clock = self.engine.clock
        now = clock.now()
        schedules = self.engine.schedule_list()
        names = {s.name for s in schedules}
        for gone in self._cursors.keys() - names:
            del self._cursors[gone]
        # A store's retention is not declared on Storage yet (the JSON store's
        # mixin types it; it moves to the base once that rewrite lands).
        horizon = getattr(self.engine.storage, "retention", None)
        if not isinstance(horizon, timedelta):
            horizon = None
        sleep = _MAX_SLEEP
        for schedule in schedules:
            cursor = self._cursors.get(schedule.name)
            try:
                for tick in ticks_due(schedule, cursor, now, horizon):
                    self._create(schedule, tick, now)
                    self._cursors[schedule.name] = tick
            except Exception:
                log.exception("schedule %r: could not create its tick; retrying", schedule.name)
                sleep = min(sleep, _RETRY_AFTER)
                continue
            self._cursors[schedule.name] = schedule.latest_tick(now)
            until = (schedule.next_tick(now) - clock.now()).total_seconds()
            sleep = min(sleep, max(until, 0.0))
        return sleep

    def _create(self, schedule: Schedule, tick: datetime, now: datetime) -> bool:
        engine = self.engine
        job_id = schedule.tick_id(tick)
        # Not the guarantee (add_once is): a cheap look that spares the losers
        # of most races a write, and their tracing a failed "send" span.
        if engine.storage.get(job_id) is not None:
            return False
        spec = engine.registry.resolve(schedule.handler)
        job = build_job(
            spec,
            dict(schedule.payload),
            now=now,
            delay=None,
            at=tick,
            queue=schedule.queue,
            priority=schedule.priority,
            headers=schedule.tick_headers(tick),
            default_policy=engine.retry_policy,
            max_payload_bytes=engine.max_payload_bytes,
            max_payload_depth=engine.max_payload_depth,
        ).replace(id=job_id)
        job = stamp(job, spec, unique_key=None, unique_for=None)  # a limited handler's tick
        try:
            job = self._persist(job)
        except _TickExists:
            return False
        self.created += 1
        log.info("schedule %r: tick %s is job %s", schedule.name, tick.isoformat(), job.id)
        engine.tick_created(job)
        return True

    def _add_once(self, job: Job) -> Job:
        if not self.engine.storage.add_once(job):
            raise _TickExists(job.id)
        return job
