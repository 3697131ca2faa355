"""The worker: slot threads that claim and run jobs (the supervisor is its own module).

Each of ``threads`` slot threads claims one due job at a time, so no
more than that many handlers run at once and nothing is claimed without a free
slot. Idle slots sleep on a condition until an in-process enqueue, the next
``run_at``, a clock jump, or the store's poll interval. The supervisor renews
leases, enforces per-attempt deadlines (replacing a stuck thread so the pool
keeps its parallelism), rescues orphans of dead workers and runs the store's
housekeeping.

Jobs marked ``run_alone`` pass through an :class:`~backrun.isolation.AloneGate`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta

from .attempts import Attempt, AttemptRecorder, Slot
from .claims import Claimer, idle_timeout
from .idle_wait import wait_idle
from .isolation import AloneGate
from .jobs import Job
from .locking import acquire
from .middleware import compose_process, overrides
from .pool_view import PoolView, WorkerHost, new_worker_id
from .scheduler import Scheduler
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES
from .supervisor import Supervisor
from .workerinfo import WorkerInfo

__all__ = ["Worker", "WorkerHost", "new_worker_id"]

log = logging.getLogger("backrun.worker")


class Worker:
    """Runs jobs from the engine's store on a pool of threads in this process.

    Build one with :meth:`Engine.running`, :meth:`Engine.run_forever` or
    :meth:`Engine.run_until_idle` rather than directly.

    Attributes:
        id: this worker's id, stamped on the jobs it claims.
        engine: the engine whose handlers, store and policies it uses.
        threads: how many attempts may run at once (its slot threads).
    """

    def __init__(
        self,
        engine: WorkerHost,
        *,
        queues: Collection[str] | None,
        threads: int,
        shutdown_timeout: float,
        lease: timedelta,
        recovery_interval: float,
        max_crashes: int,
    ) -> None:
        self.id = new_worker_id()
        self.engine = engine
        self.storage = engine.storage
        self.clock = engine.clock
        self.queues = None if queues is None else frozenset(queues)
        self.threads = threads
        self.shutdown_timeout = shutdown_timeout
        self.lease = lease
        self.recovery_interval = recovery_interval
        self.max_crashes = max_crashes
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle slots wait here
        self._changed = threading.Condition(self._lock)  # idle/drain observers wait here
        self._stopping = False
        self._forced = False
        self._wake_seq = 0
        self._idle = 0
        self._slots: list[Slot] = []
        self._stuck: set[Slot] = set()
        self._attempts: dict[str, Attempt] = {}
        self._gate = AloneGate(self._work, self._attempts)
        # Jobs one slot's claim took for idle slots, and how many claims under way promised.
        self._handoff: deque[Job] = deque()
        self._promised = 0
        self._processed = 0
        self._claim_failing = False
        self._threads: list[threading.Thread] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._middleware = list(engine.middleware)
        self._recorder = AttemptRecorder(
            engine=engine,
            storage=self.storage,
            clock=self.clock,
            handlers=engine.registry,
            default_policy=engine.retry_policy,
            worker_id=self.id,
            middleware=self._middleware,
            forced=lambda: self._forced,
            # Results share the payload limit; a host without one gets the default.
            max_result_bytes=getattr(engine, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES),
        )
        self._chain = compose_process(self._middleware, self._recorder.invoke)
        self._supervisor = Supervisor(
            PoolView(self),
            self._recorder,
            storage=self.storage,
            clock=self.clock,
            worker_id=self.id,
            lease=lease,
            recovery_interval=recovery_interval,
            max_crashes=max_crashes,
        )
        self._scheduler = Scheduler(engine, self.id)
        self._claimer = Claimer(
            self.storage, engine.registry, self._middleware, worker_id=self.id, lease=lease
        )

    @property
    def max_parallelism(self) -> int:
        """The old name of :attr:`threads` (deprecated)."""
        warnings.warn(
            "Worker.max_parallelism is deprecated: use Worker.threads",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.threads

    # -- public state -----------------------------------------------------

    @property
    def running_count(self) -> int:
        """Attempts in flight now."""
        return len(self._attempts)

    @property
    def stuck_threads(self) -> int:
        """Threads whose attempt timed out but whose handler has not returned."""
        return len(self._stuck)

    @property
    def processed(self) -> int:
        """Attempts recorded by this worker so far."""
        return self._processed

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Register with the store, then start the slot and supervisor threads."""
        self.started_at = self.clock.now()
        self._claimer.limits()  # a store that cannot enforce them is refused here, at once
        self.storage.register_worker(self.id, now=self.started_at)
        for layer in self._middleware:
            if overrides(layer, "worker_started"):
                layer.worker_started(self)
        self._unsubscribe.append(self.clock.subscribe(self.wake_all))
        self._unsubscribe.append(self.storage.subscribe(self._store_changed))
        with self._lock:
            for _ in range(self.threads):
                self._start_slot()
        supervisor = threading.Thread(
            target=self._supervisor.run, name=f"backrun-supervisor-{self.id}", daemon=True
        )
        self._threads.append(supervisor)
        supervisor.start()
        self._scheduler.start()
        log.info(
            "worker %s started: %d slots, queues %s",
            self.id,
            self.threads,
            "all" if self.queues is None else ",".join(sorted(self.queues)),
        )

    def info(self) -> WorkerInfo:
        """Return what this worker does now, as operators see it in ``engine.workers()``."""
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=None if self.queues is None else tuple(sorted(self.queues)),
            max_parallelism=self.threads,  # the record's field keeps its stored name
            started_at=getattr(self, "started_at", None) or self.clock.now(),
            last_seen=self.clock.now(),
            running=tuple(sorted(self._attempts)),
        )

    def _publish_info(self) -> None:
        """Publish :meth:`info` to the store; valid for one recovery interval."""
        try:
            self.storage.publish_worker(self.info(), ttl=timedelta(seconds=self.recovery_interval))
        except Exception:
            log.warning("worker %s could not publish its record", self.id, exc_info=True)

    def _start_slot(self) -> None:
        slot = Slot()
        thread = threading.Thread(
            target=self._slot_loop, args=(slot,), name="backrun-slot", daemon=True
        )
        slot.thread = thread
        self._slots.append(slot)
        self._threads.append(thread)
        thread.start()

    def wake(self) -> None:
        """Wake one idle slot: a job was just added in this process."""
        with self._lock:
            self._wake_seq += 1
            self._work.notify()

    def _store_changed(self) -> None:
        # A job may have come due (wake the slots); a cancel may be waiting
        # (the supervisor asks the store, throttled, off the store's thread).
        self._supervisor.store_changed()
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every idle slot and the supervisor (time jumped, or jobs arrived)."""
        with self._lock:
            self._wake_seq += 1
            self._work.notify_all()
        self._supervisor.wake()

    def schedules_changed(self) -> None:
        """Look at the engine's schedules again now (one was added)."""
        self._scheduler.wake()

    def request_stop(self) -> None:
        """Stop claiming; running attempts go on. Safe to call from a signal handler.

        Only flags are set here (taking a lock inside a signal handler could
        deadlock); :meth:`stop` wakes the threads and waits for the attempts.
        """
        self._stopping = True

    def force(self) -> None:
        """Stop waiting for running attempts: release them now. Signal-safe."""
        self._forced = True
        self._stopping = True

    def _running_attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts.values())

    @property
    def forced(self) -> bool:
        """True once :meth:`force` was called."""
        return self._forced

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping

    def cancel_local(self, job_id: str) -> bool:
        """Ask a job running here to stop (``ctx.cancelled``); True if it runs here."""
        with self._lock:
            attempt = self._attempts.get(job_id)
        if attempt is None:
            return False
        attempt.stop_requested = True
        attempt.ctx.cancel()
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming, wait for running attempts, release what is left.

        Args:
            timeout: seconds to wait for running attempts (default: the
                engine's ``shutdown_timeout``); 0 releases them at once.

        Returns:
            True if every attempt finished; False if some were released.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        with self._lock:
            already = self._stopping and not self._threads
            self._stopping = True
            self._work.notify_all()
        if already:
            return True
        self._scheduler.stop()
        for layer in self._middleware:
            if overrides(layer, "worker_stopping"):
                layer.worker_stopping(self)
        drained = self._drain(timeout)
        if not drained:
            self._release_running()
        self._supervisor.wake()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current and not any(
                s.thread is thread and s.abandoned for s in self._slots
            ):
                thread.join(timeout=5.0)
        self._threads.clear()
        with self._lock:
            unstarted = list(self._handoff)
            self._handoff.clear()
            self._gate.claiming -= len(unstarted)
        for job in unstarted:
            self._recorder.give_back(job)
        self.storage.unregister_worker(self.id)
        log.info("worker %s stopped (%s)", self.id, "drained" if drained else "released jobs")
        return drained

    def _drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._attempts and not self._forced:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
            return not self._attempts

    def _release_running(self) -> None:
        with self._lock:
            attempts = list(self._attempts.values())
        for attempt in attempts:
            attempt.ctx.cancel()
            if attempt.settle():
                self._abandon(attempt)
                self._recorder.release(attempt)

    def wait_idle(self, timeout: float) -> int:
        """Block until nothing is due and nothing runs; return attempts processed.

        Raises:
            TimeoutError: work remained after ``timeout`` seconds.
        """
        return wait_idle(self, timeout)

    # -- slot threads -----------------------------------------------------

    def _slot_loop(self, slot: Slot) -> None:
        attempt: Attempt | None = None
        try:
            # An attempt claimed with the last one's completion runs even if a
            # stop came meanwhile, like one whose claim returned just before it.
            while attempt is not None or (not self._stopping and not slot.abandoned):
                attempt = self._next_attempt(slot) if attempt is None else self._run(attempt, slot)
        finally:
            with self._lock:
                self._stuck.discard(slot)
                if slot in self._slots and slot.abandoned:
                    self._slots.remove(slot)
                self._changed.notify_all()

    def _next_attempt(self, slot: Slot) -> Attempt | None:
        """A job handed over by another slot's claim, else one claimed now; else idle."""
        seen = self._wake_seq
        with self._lock:
            handed = self._handoff.popleft() if self._handoff and not self._stopping else None
        if handed is not None:
            return self._start(handed, slot, solo=False)
        entered = self._enter_claim()
        if entered is None:
            return None  # the gate was closed; it waited, look again
        solo, extra = entered
        try:
            claimed = self._claimer.claim(queues=self.queues, now=self.clock.now(), limit=1 + extra)
        except Exception as exc:
            self._claim_failed(exc)
            with self._lock:
                self._settle_claim(None, None, solo, extra, [])
            self._pause(1.0)
            return None
        if self._claim_failing:
            self._claim_failing = False
            log.warning("claiming works again")
        if claimed.jobs:
            return self._start(claimed.jobs[0], slot, solo, extra, claimed.jobs[1:])
        with self._lock:
            self._settle_claim(None, None, solo, extra, [])
        timeout = idle_timeout(self.storage, self.queues, claimed, now=self.clock.now())
        with self._lock:
            if not self._stopping and seen == self._wake_seq and not self._handoff:
                self._idle += 1
                self._changed.notify_all()
                self._work.wait(timeout)
                self._idle -= 1
        return None

    def _start(
        self, job: Job, slot: Slot, solo: bool, extra: int = 0, rest: Sequence[Job] = ()
    ) -> Attempt | None:
        """Take ``job`` (claimed for this slot) through the gate: its attempt, or None."""
        attempt = self._recorder.begin(job, slot)
        with self._lock:
            keep = self._settle_claim(job, attempt, solo, extra, rest)
        if keep:
            return attempt
        self._recorder.give_back(job)  # keeps its place; runs once we drain
        return None

    def _enter_claim(self) -> tuple[bool, int] | None:
        """Pass the run-alone gate: (solo, extra jobs to claim for idle slots).

        ``solo`` is True for the solo claim. Returns ``None`` after waiting at
        a closed gate.
        """
        with self._lock:
            solo = self._gate.enter()
            if solo is None:
                if not self._stopping:
                    self._work.wait(1.0)
                return None
            return solo, self._reserve_extra(solo)

    def _reserve_extra(self, solo: bool) -> int:
        """How many more jobs one claim should take for idle slots (lock held, claim entered).

        They count as claims in flight at the gate until a slot takes them.
        """
        if solo:
            return 0
        extra = max(0, self._idle - len(self._handoff) - self._promised)
        self._promised += extra
        self._gate.claiming += extra
        return extra

    def _settle_claim(
        self,
        job: Job | None,
        attempt: Attempt | None,
        solo: bool,
        extra: int,
        rest: Sequence[Job],
    ) -> bool:
        """Account for a finished claim (lock held); False if ``job`` must be given back unrun.

        ``rest``: the jobs claimed beyond the first, for idle slots (at most ``extra``).
        """
        self._promised -= extra
        self._gate.claiming -= extra - len(rest)
        if rest:
            self._handoff.extend(rest)
            self._work.notify(len(rest))
        keep = self._gate.leave(job, solo)
        if keep and attempt is not None:
            self._attempts[attempt.job.id] = attempt
        return keep

    def _forget_attempt(self, attempt: Attempt) -> None:
        """Drop a finished or abandoned attempt (lock held)."""
        job_id = attempt.job.id
        if self._attempts.get(job_id) is attempt:
            del self._attempts[job_id]
        self._gate.forgotten(job_id)

    def _claim_failed(self, exc: Exception) -> None:
        # One line per outage, not one per slot per second; the store logs its own.
        if not self._claim_failing:
            self._claim_failing = True
            log.error("claiming failed (%s: %s); retrying every second", type(exc).__name__, exc)

    def _pause(self, seconds: float) -> None:
        with self._lock:
            if not self._stopping:
                self._work.wait(seconds)

    def _run(self, attempt: Attempt, slot: Slot) -> Attempt | None:
        """Run and record ``attempt``; return the next attempt claimed with its record, if any."""
        job = attempt.job
        deadline = attempt.ctx.deadline
        wakes_at = self._supervisor.wakes_at
        if deadline is not None and (wakes_at is None or deadline < wakes_at):
            self._supervisor.wake()  # a short timeout: the supervisor must look sooner
        following: Attempt | None = None
        forgotten = False
        try:
            error = self._recorder.execute(attempt, self._chain)
            if attempt.settle():
                following, forgotten = self._finish(attempt, error, slot)
        finally:
            if not forgotten:  # rare: _finish forgets the attempts it records
                with self._lock:
                    self._forget_attempt(attempt)
                    self._processed += 1
                    if not self._attempts:  # observers wait for "nothing in flight" only
                        self._changed.notify_all()
        if slot.abandoned:
            log.warning("stuck thread for job %s returned; its result was discarded", job.id)
        return following

    def _finish(
        self, attempt: Attempt, error: BaseException | None, slot: Slot
    ) -> tuple[Attempt | None, bool]:
        """Record ``attempt``, claiming the slot's next job in the same store call if it may.

        Returns the next attempt, and True if ``attempt`` was forgotten here.
        """
        lock, gate = self._lock, self._gate
        counted = True  # the claim is counted at the gate (claiming)
        if self._stopping or slot.abandoned or self._handoff:
            entered = None
        elif not self._idle and gate.alone_id is None and not gate.wanted:
            # The usual case, without the lock: a plain claim of one job. This
            # attempt stays in _attempts until the claim is settled below, so it
            # holds the gate's in-flight count as the counted claim would.
            entered, counted = (False, 0), False
        else:
            acquire(lock)  # see backrun.locking
            try:
                entered = None
                if not (self._stopping or slot.abandoned or self._handoff):
                    solo = gate.enter()
                    entered = None if solo is None else (solo, self._reserve_extra(solo))
            finally:
                lock.release()
        if entered is None:
            self._recorder.finish(attempt, error)
            return None, False
        solo, extra = entered
        now = self.clock.now()
        try:
            claimed = self._recorder.finish_and_claim(
                attempt,
                error,
                lambda record: self._claimer.finish_and_claim(
                    record, queues=self.queues, now=now, limit=1 + extra
                ),
                now,  # one clock reading per job: the outcome's and the next claim's time
            )
        except BaseException:
            if counted:
                with self._lock:  # the claim never happened: close it at the gate
                    self._settle_claim(None, None, solo, extra, [])
            raise
        jobs = [] if claimed is None else claimed.jobs
        first = jobs[0] if jobs else None
        following = None if first is None else self._recorder.begin(first, slot)
        unstarted: list[Job] = []
        acquire(lock)
        try:
            if not counted:
                gate.claiming += 1  # settled below as a counted claim
            self._forget_attempt(attempt)
            self._processed += 1
            if self._stopping:  # e.g. attempt_finished asked for it: start nothing more
                unstarted, first, following = jobs, None, None
                jobs = []
            if not self._settle_claim(first, following, solo, extra, jobs[1:]):
                assert first is not None
                unstarted, following = [first], None
            if not self._attempts:
                self._changed.notify_all()
        finally:
            lock.release()
        for job in unstarted:
            self._recorder.give_back(job)  # uncharged, in its place
        return following, True

    def _abandon(self, attempt: Attempt) -> None:
        """Give up on an attempt's thread; start a fresh slot in its place."""
        slot = attempt.slot
        with self._lock:
            # The slot thread may have removed the entry already: its handler
            # can return between our settle() and this line.
            self._forget_attempt(attempt)
            if slot is None or slot.abandoned:
                return
            slot.abandoned = True
            self._stuck.add(slot)
            if not self._stopping:
                self._start_slot()
            self._changed.notify_all()
