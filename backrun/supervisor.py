"""The supervisor: one thread per worker for leases, deadlines and recovery.

Every third of the lease it renews the leases of running attempts (learning
of cancellations on the way); at each attempt's deadline it times the attempt
out, abandoning its thread for a fresh one; every ``recovery_interval`` it
rescues the jobs of dead workers and runs the store's housekeeping.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Protocol

from .attempts import Attempt
from .clock import Clock
from .errors import JobTimeout
from .jobs import WORKER_CRASHED, WORKER_CRASHED_UNCHARGED, Job, JobError, JobState
from .retries import RetryPolicy
from .storage.base import Storage

__all__ = ["OutcomeWriter", "SupervisedPool", "Supervisor", "rescue_orphan"]

log = logging.getLogger("backrun.worker")

CANCEL_CHECK_SECONDS = 0.15
"""The least time between two ``cancel_requests`` queries prompted by the store."""


class SupervisedPool(Protocol):
    """The worker as its supervisor sees it: the attempts in flight and the stop flags."""

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: no recovery rounds, drain quickly."""
        ...

    @property
    def forced(self) -> bool:
        """True once the stop is forced: the supervisor returns at once."""
        ...

    @property
    def running_count(self) -> int:
        """Attempts in flight; the supervisor runs until a stopping pool has none."""
        ...

    def running_attempts(self) -> list[Attempt]:
        """A snapshot of the attempts in flight."""
        ...

    def abandon(self, attempt: Attempt) -> None:
        """Give up on a timed-out attempt's thread and start a fresh one in its place."""
        ...

    def publish_info(self) -> None:
        """Write the worker's record (what it runs, for the dashboard) to the store."""
        ...


class OutcomeWriter(Protocol):
    """The part of :class:`~backrun.attempts.AttemptRecorder` the supervisor uses."""

    def policy_for(self, job: Job) -> RetryPolicy:
        """The retry policy (and so the timeout) that governs ``job``."""
        ...

    def finish(
        self, attempt: Attempt, error: BaseException | None, patience: float | None = None
    ) -> bool:
        """Record how ``attempt`` ended; False if the store refused until patience ran out."""
        ...

    def orphan_recovered(self, job: Job) -> None:
        """Tell the middleware a dead worker's job was rescued."""
        ...


class Supervisor:
    """Leases, deadlines and orphan recovery for one worker.

    Args:
        pool: the worker's attempts and stop flags.
        recorder: writes timeouts, and announces rescued orphans.
        storage: the store (heartbeats, cancels, orphans, housekeeping).
        clock: the engine's clock.
        worker_id: the worker's id (its heartbeats).
        lease: how long a claim lasts unrenewed; renewed every third of it.
        recovery_interval: seconds between orphan-recovery rounds.
        max_crashes: worker crashes a job may cause before it is DEAD.
    """

    def __init__(
        self,
        pool: SupervisedPool,
        recorder: OutcomeWriter,
        *,
        storage: Storage,
        clock: Clock,
        worker_id: str,
        lease: timedelta,
        recovery_interval: float,
        max_crashes: int,
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self.storage = storage
        self.clock = clock
        self._worker_id = worker_id
        self._lease = lease
        self._recovery_interval = recovery_interval
        self._max_crashes = max_crashes
        self._unrecorded: list[tuple[Attempt, BaseException]] = []
        # When (clock time) the loop next wakes by itself, or None while it is
        # awake; a new attempt whose deadline comes sooner wakes it.
        self.wakes_at: datetime | None = None
        self._next_cancel_check = 0.0
        self.settling = 0  # timed-out attempts being recorded now
        self._wake = threading.Event()
        self._store_changed = False  # the store's callback fired; cancels may be waiting
        self.first_round_done = threading.Event()  # orphans rescued once, leases renewed once

    def wake(self) -> None:
        """Make the loop look at everything now (a stop, a short deadline, a time jump)."""
        self._wake.set()

    def store_changed(self) -> None:
        """The store announced a change: ask it about cancels soon (throttled)."""
        self._store_changed = True
        self._wake.set()

    def run(self) -> None:
        """The supervisor thread's loop; returns once the worker has drained or is forced."""
        pool = self._pool
        heartbeat_every = max(self._lease.total_seconds() / 3, 0.05)
        next_heartbeat = time.monotonic()  # at once: a store may judge liveness by it
        next_recovery = time.monotonic()
        next_publish = time.monotonic()  # the worker's record, twice per recovery interval
        while not pool.stopping or pool.running_count:
            if pool.forced:
                return
            self.wakes_at = None
            self._wake.clear()
            now = time.monotonic()
            try:
                if self._unrecorded:
                    self._retry_unrecorded()
                self._enforce_deadlines()
                if self._store_changed and now >= self._next_cancel_check:
                    self._store_changed = False
                    self._next_cancel_check = now + CANCEL_CHECK_SECONDS
                    self._check_cancels()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + heartbeat_every
                if now >= next_recovery and not pool.stopping:
                    self._recover()
                    self.storage.maintain(now=self.clock.now())
                    next_recovery = now + self._recovery_interval
                if now >= next_publish and not pool.stopping:
                    pool.publish_info()
                    next_publish = now + self._recovery_interval / 2
            except Exception:
                log.exception("supervisor round failed; will retry")
            self.first_round_done.set()
            wait = min(next_heartbeat, next_recovery, next_publish) - time.monotonic()
            if self._store_changed:  # throttled above: look again once allowed
                wait = min(wait, self._next_cancel_check - time.monotonic())
            deadline = self._next_deadline()
            if deadline is not None:
                wait = min(wait, (deadline - self.clock.now()).total_seconds())
            if pool.stopping:  # drain: look often, the attempts are ending
                wait = min(wait, 0.1)
            wait = max(wait, 0.001)
            self.wakes_at = self.clock.now() + timedelta(seconds=wait)
            self._wake.wait(wait)

    @property
    def unrecorded(self) -> int:
        """Attempts that ended here but whose outcome is not in the store yet."""
        return self.settling + len(self._unrecorded)

    def _next_deadline(self) -> datetime | None:
        deadlines = [a.ctx.deadline for a in self._pool.running_attempts() if a.ctx.deadline]
        return min(deadlines) if deadlines else None

    def _enforce_deadlines(self) -> None:
        now = self.clock.now()
        for attempt in self._pool.running_attempts():
            deadline = attempt.ctx.deadline
            if deadline is None or deadline > now:
                continue
            attempt.ctx.cancel()
            if not attempt.settle():
                continue  # it finished (or was released) just now
            # Counted until recorded: the job is still RUNNING in the store
            # after it leaves the worker's attempts, and idle means none is.
            self.settling += 1
            try:
                self._pool.abandon(attempt)
                timeout = self._recorder.policy_for(attempt.job).timeout
                error = JobTimeout(
                    f"attempt {attempt.ctx.attempt} ran past its timeout of {timeout}"
                )
                log.warning("job %s timed out; its thread is abandoned", attempt.job.id)
                if not self._recorder.finish(attempt, error, patience=5.0):
                    self._unrecorded.append((attempt, error))
            finally:
                self.settling -= 1

    def _retry_unrecorded(self) -> None:
        """Write timeouts the store refused earlier; never block the loop on them."""
        pending, self._unrecorded = self._unrecorded, []
        for attempt, error in pending:
            if not self._recorder.finish(attempt, error, patience=1.0):
                self._unrecorded.append((attempt, error))

    def _heartbeat(self) -> None:
        attempts = self._pool.running_attempts()
        now = self.clock.now()
        lease_until = now + self._lease
        jobs = [a.job for a in attempts]
        stop = self.storage.heartbeat(
            jobs, worker_id=self._worker_id, now=now, lease_until=lease_until
        )
        for attempt in attempts:
            if attempt.job.id in stop:
                attempt.stop_requested = True
                attempt.ctx.cancel()

    def _check_cancels(self) -> None:
        """The store announced a change: stop attempts whose cancel another process asked for."""
        attempts = self._pool.running_attempts()
        if not attempts:
            return
        requested = self.storage.cancel_requests([a.job.id for a in attempts])
        for attempt in attempts:
            if attempt.job.id in requested:
                attempt.stop_requested = True
                attempt.ctx.cancel()

    def _recover(self) -> None:
        now = self.clock.now()
        running_here = {a.job.id for a in self._pool.running_attempts()}
        for orphan in self.storage.orphans(now=now):
            if orphan.id in running_here:
                continue  # ours and running; a claim of ours whose reply was lost is rescued
            rescued = rescue_orphan(orphan, now=now, max_crashes=self._max_crashes)
            try:
                self.storage.update(rescued)
            except Exception as exc:
                log.info("orphan %s not rescued here: %s", orphan.id, exc)
                continue
            log.warning(
                "recovered job %s from dead worker %s -> %s",
                orphan.id,
                orphan.worker_id,
                rescued.state.value,
            )
            self._recorder.orphan_recovered(rescued)


def rescue_orphan(orphan: Job, *, now: datetime, max_crashes: int) -> Job:
    """Return the record that rescues a dead worker's job.

    A worker crash is charged only to a job that was running alone in its
    worker (``orphan.run_alone``): then nothing else can have killed it. Such
    an attempt stays charged and is recorded as a ``WorkerCrashed`` error; the
    job runs again, unless it has now killed ``max_crashes`` workers or used
    its last attempt: then it is DEAD.

    Any other orphan may have been killed by a neighbour, so the crash is not
    charged: the attempt is given back, a ``WorkerCrashedUncharged`` error is
    recorded (visible, never counted toward ``max_crashes``), and the job is
    requeued with ``run_alone=True``, so it next runs by itself.

    Either way the job keeps its place: its original ``run_at`` is kept, so it
    is claimed before jobs enqueued after it. A job whose cancel was requested
    ends CANCELLED (unless it is DEAD for its crashes).
    """
    common: dict[str, Any] = {"lease_expires_at": None, "run_at": orphan.run_at or now}
    message = f"crashed worker: {orphan.worker_id} died during attempt {orphan.attempts}"
    if not orphan.run_alone:
        error = JobError(
            type=WORKER_CRASHED_UNCHARGED,
            message=message + " while other jobs ran beside it; not charged, runs next alone",
            traceback="",
            attempt=orphan.attempts,
            at=now,
        )
        errors = (*orphan.errors, error)
        if orphan.cancel_requested:
            return orphan.replace(
                state=JobState.CANCELLED, errors=errors, finished_at=now, **common
            )
        return orphan.replace(
            state=JobState.QUEUED,
            errors=errors,
            attempts=max(orphan.attempts - 1, 0),
            started_at=None,
            run_alone=True,
            **common,
        )
    error = JobError(
        type=WORKER_CRASHED, message=message, traceback="", attempt=orphan.attempts, at=now
    )
    errors = (*orphan.errors, error)
    crashes = sum(1 for e in errors if e.type == WORKER_CRASHED)
    if crashes >= max_crashes or orphan.attempts >= orphan.max_attempts:
        return orphan.replace(state=JobState.DEAD, errors=errors, finished_at=now, **common)
    if orphan.cancel_requested:
        return orphan.replace(state=JobState.CANCELLED, errors=errors, finished_at=now, **common)
    return orphan.replace(state=JobState.QUEUED, errors=errors, **common)
