"""In-process storage: a dict of records, two heaps per queue, one lock.

Fast and exact, but nothing survives the process: for tests, scripts and
benchmarks, or for work that may be lost on exit.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from backrun.clock import utcnow as now
from backrun.errors import JobNotFound, LeaseLost
from backrun.followups import followup_jobs
from backrun.jobs import (
    FINISHED_STATES,
    Job,
    JobState,
    Progress,
    check_job_id,
    job_of_fields,
    new_claim_token,
)
from backrun.limits import HandlerLimits, LimitedClaim
from backrun.locking import acquire
from backrun.workerinfo import WorkerInfo

from ._memory_limits import MemoryLimits
from .base import READY_STATES, Capabilities, Storage

__all__ = ["MemoryStorage"]


def _claim_changes(now: datetime, worker_id: str, lease: timedelta) -> dict[str, Any]:
    """The fields a claim sets on every job it takes (its token is set per job)."""
    return {
        "state": JobState.RUNNING,
        "worker_id": worker_id,
        "started_at": now,
        "lease_expires_at": now + lease,
    }


def _claimed(job: Job, changes: dict[str, Any]) -> Job:
    """``job`` as a claim takes it: ``changes``, one more attempt, a fresh token."""
    fields = job.__dict__.copy()  # Job.replace without its keyword dict and check
    fields.update(changes)
    fields["attempts"] = job.attempts + 1
    fields["claim_token"] = new_claim_token()
    return job_of_fields(fields)


_new = object.__new__
_set = object.__setattr__


def _plain_claim(jobs: list[Job]) -> LimitedClaim:
    """``LimitedClaim(jobs)``, without the frozen dataclass's ``__init__`` frame (per job)."""
    claim = _new(LimitedClaim)
    _set(claim, "jobs", jobs)
    _set(claim, "waiting", [])
    _set(claim, "retry_at", None)
    return claim


def _followups(job: Job) -> list[Job] | None:
    """The follow-ups a write of ``job`` adds (``None``: to build under the lock)."""
    if job.state is not JobState.SUCCEEDED or not job.followups:
        return []
    if job.finished_at is None:
        return None
    return followup_jobs(job, job.finished_at)


# Heap entries end in (job id, entry number); an entry is live only while
# _entry[job id] still holds its number, so stale entries are skipped lazily.
_Delayed = tuple[datetime, str, int]
_Ready = tuple[int, datetime, str, int]


class _QueueHeaps:
    __slots__ = ("delayed", "latest", "ready")

    def __init__(self) -> None:
        self.delayed: list[_Delayed] = []
        self.ready: list[_Ready] = []
        self.latest: datetime | None = None  # no entry of delayed has a later run_at


class MemoryStorage(MemoryLimits, Storage):
    """A store held in this process's memory; see the module docstring."""

    capabilities = Capabilities(unique_jobs=True, limits=True)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, _QueueHeaps] = {}
        self._entry: dict[str, int] = {}
        self._next_entry = 0
        self._workers: set[str] = set()
        self._callbacks: list[Callable[[], None]] = []
        self._worker_info: dict[str, WorkerInfo] = {}
        self._paused: set[str] = set()
        self._init_limits()
        cls = type(self)
        self._fused = (
            cls.update is MemoryStorage.update
            and cls.claim is MemoryStorage.claim
            and cls.claim_limited is MemoryLimits.claim_limited
        )

    def _index(self, job: Job) -> None:
        """Put a SCHEDULED/QUEUED job in its queue's delayed heap."""
        assert job.run_at is not None
        self._next_entry += 1
        entry = self._next_entry
        self._entry[job.id] = entry
        heaps = self._queues.get(job.queue)
        if heaps is None:
            heaps = self._queues[job.queue] = _QueueHeaps()
        heapq.heappush(heaps.delayed, (job.run_at, job.id, entry))
        if heaps.latest is None or job.run_at > heaps.latest:
            heaps.latest = job.run_at

    def _unindex(self, job_id: str) -> None:
        self._entry.pop(job_id, None)

    def add(self, job: Job) -> None:
        """Persist a new job; see :meth:`Storage.add`."""
        check_job_id(job.id)
        if job.state not in READY_STATES or job.run_at is None:
            raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        lock = self._lock
        if not lock.acquire(False):
            acquire(lock)  # hot locks are waited for on the GIL: see backrun.locking
        try:
            if job.id in self._jobs:
                raise ValueError(f"job {job.id} exists already")
            self._jobs[job.id] = job
            self._index(job)
        finally:
            lock.release()

    def add_many(self, jobs: Sequence[Job]) -> None:
        """Persist several new jobs; all or none are added."""
        for job in jobs:
            check_job_id(job.id)
            if job.state not in READY_STATES or job.run_at is None:
                raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        with self._lock:
            ids = {job.id for job in jobs}
            if len(ids) != len(jobs) or any(i in self._jobs for i in ids):
                raise ValueError("duplicate job ids in batch or store")
            for job in jobs:
                self._jobs[job.id] = job
                self._index(job)

    def get(self, job_id: str) -> Job | None:
        """Return the job or ``None``; see :meth:`Storage.get`."""
        return self._jobs.get(check_job_id(job_id))

    def _promote(self, heaps: _QueueHeaps, now: datetime) -> None:
        """Move entries that have come due from the delayed heap to the ready heap."""
        delayed = heaps.delayed
        if not delayed or delayed[0][0] > now:
            return
        jobs, live = self._jobs, self._entry
        if heaps.latest is not None and heaps.latest <= now:
            # All came due (a filled queue's first claim): one O(n) heapify, not n pushes.
            heaps.ready.extend(
                (-jobs[job_id].priority, run_at, job_id, entry)
                for run_at, job_id, entry in delayed
                if live.get(job_id) == entry
            )
            heapq.heapify(heaps.ready)
            delayed.clear()
            heaps.latest = None
            return
        while delayed and delayed[0][0] <= now:
            run_at, job_id, entry = heapq.heappop(delayed)
            if live.get(job_id) != entry:
                continue
            heapq.heappush(heaps.ready, (-jobs[job_id].priority, run_at, job_id, entry))
        if not delayed:
            heaps.latest = None

    def _pop_best(self, candidates: list[_QueueHeaps]) -> str | None:
        live = self._entry
        if len(candidates) == 1:  # one queue (the usual case): its head, past stale entries
            ready = candidates[0].ready
            while ready:
                _, _, job_id, entry = heapq.heappop(ready)
                if live.get(job_id) == entry:
                    del live[job_id]
                    return job_id
            return None
        best: _QueueHeaps | None = None
        for heaps in candidates:
            ready = heaps.ready
            while ready and self._entry.get(ready[0][2]) != ready[0][3]:
                heapq.heappop(ready)
            if ready and (best is None or ready[0] < best.ready[0]):
                best = heaps
        if best is None:
            return None
        job_id = heapq.heappop(best.ready)[2]
        del self._entry[job_id]
        return job_id

    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs; see :meth:`Storage.claim`."""
        changes = _claim_changes(now, worker_id, lease)
        lock = self._lock
        if not lock.acquire(False):
            acquire(lock)
        try:
            return self._claim_locked(queues, limit, now, changes)
        finally:
            lock.release()

    def _claim_locked(
        self, queues: Collection[str] | None, limit: int, now: datetime, changes: dict[str, Any]
    ) -> list[Job]:
        """Claim with the lock held; ``changes`` are the fields every claimed job gets."""
        claimed: list[Job] = []
        candidates = self._promote_all(queues, now)
        while len(claimed) < limit:
            job_id = self._pop_best(candidates)
            if job_id is None:
                break
            job = self._jobs[job_id] = _claimed(self._jobs[job_id], changes)
            claimed.append(job)
        return claimed

    def _promote_all(self, queues: Collection[str] | None, now: datetime) -> list[_QueueHeaps]:
        """The heaps of the claimable queues, with what came due promoted (lock held)."""
        names = self._queues if queues is None else queues
        candidates = [
            h for q in names if q not in self._paused and (h := self._queues.get(q)) is not None
        ]
        for heaps in candidates:
            self._promote(heaps, now)
        return candidates

    def update(self, job: Job) -> None:
        """Write a claimed job as its owner; see :meth:`Storage.update`."""
        children = _followups(job)
        lock = self._lock
        if not lock.acquire(False):
            acquire(lock)
        try:
            freed = self._update_locked(job, children)
            callbacks = list(self._callbacks) if freed else []
        finally:
            lock.release()
        for callback in callbacks:  # a limit's slot is free: wake waiting workers
            callback()

    def update_and_claim(
        self,
        job: Job,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
        limits: Mapping[str, HandlerLimits] | None = None,
    ) -> LimitedClaim:
        """:meth:`update`, then claim, under one acquisition of the store's lock.

        A subclass that overrides ``update``, ``claim`` or ``claim_limited``
        (to observe or fail writes) gets the two separate calls instead.
        """
        if not self._fused:
            return super().update_and_claim(
                job,
                queues=queues,
                limit=limit,
                now=now,
                worker_id=worker_id,
                lease=lease,
                limits=limits,
            )
        children = _followups(job)
        changes = _claim_changes(now, worker_id, lease)
        lock = self._lock
        if not lock.acquire(False):
            acquire(lock)
        try:
            freed = self._update_locked(job, children)
            if limits:
                claimed = self._claim_limited_locked(queues, limit, now, changes, limits)
            else:
                claimed = _plain_claim(self._claim_locked(queues, limit, now, changes))
            callbacks = list(self._callbacks) if freed else []
        finally:
            lock.release()
        for callback in callbacks:
            callback()
        return claimed

    def _update_locked(self, job: Job, children: list[Job] | None) -> bool:
        """Write ``job`` over its claim (lock held); True if it freed a limit's slot.

        ``children``: its follow-ups, built before the lock was taken (``None``:
        build them here, the finish time being unknown).
        """
        stored = self._jobs.get(job.id)
        if (
            stored is None
            or stored.state is not JobState.RUNNING
            or stored.claim_token != job.claim_token
        ):
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
        if job.state is JobState.RUNNING and stored.cancel_requested:
            job = job.replace(cancel_requested=True)
        if children is None:
            children = followup_jobs(job, stored.started_at or now())
        self._jobs[job.id] = job
        if job.state in READY_STATES:
            self._index(job)
        for child in children:  # under the same lock: visible with the success
            if child.id not in self._jobs:
                self._jobs[child.id] = child
                self._index(child)
        return self._left_running(stored, job)

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress; see :meth:`Storage.record_progress`."""
        with self._lock:
            stored = self._jobs.get(job.id)
            if (
                stored is None
                or stored.state is not JobState.RUNNING
                or stored.claim_token != job.claim_token
            ):
                raise LeaseLost(f"job {job.id} is no longer held under this claim")
            self._jobs[job.id] = stored.replace(progress=progress)

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Extend leases; see :meth:`Storage.heartbeat`."""
        stop: set[str] = set()
        with self._lock:
            self._workers.add(worker_id)
            for job in jobs:
                stored = self._jobs.get(job.id)
                if (
                    stored is None
                    or stored.state is not JobState.RUNNING
                    or stored.claim_token != job.claim_token
                ):
                    stop.add(job.id)
                    continue
                if stored.cancel_requested:
                    stop.add(job.id)
                self._jobs[job.id] = stored.replace(lease_expires_at=lease_until)
        return stop

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        with self._lock:
            job = self._require(job_id)
            if job.state in READY_STATES:
                self._unindex(job_id)
                job = job.replace(state=JobState.CANCELLED, finished_at=now)
            elif job.state is JobState.RUNNING:
                job = job.replace(cancel_requested=True)
            self._jobs[job_id] = job
            callbacks = list(self._callbacks) if job.state is JobState.RUNNING else []
        # Another engine on this store may run it: tell every worker subscribed.
        for callback in callbacks:
            callback()
        return job

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Running jobs among ``job_ids`` with a cancel requested; see the base class."""
        with self._lock:
            jobs = [self._jobs.get(job_id) for job_id in job_ids]
        return {
            job.id
            for job in jobs
            if job is not None and job.state is JobState.RUNNING and job.cancel_requested
        }

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when a running job's cancel is requested, or a limit's slot frees.

        New jobs need no announcement: an engine wakes its own workers.
        """
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        with self._lock:
            job = self._require(job_id)
            if job.state in (JobState.DEAD, JobState.CANCELLED):
                job = job.replace(
                    state=JobState.QUEUED,
                    attempts=0,
                    run_at=now,
                    finished_at=None,
                    cancel_requested=False,
                )
            elif job.state is JobState.SCHEDULED:
                job = job.replace(state=JobState.QUEUED, run_at=now)
            else:
                raise ValueError(f"job {job_id} is {job.state.value}; it cannot be retried")
            self._jobs[job_id] = job
            self._index(job)
            return job

    def _require(self, job_id: str) -> Job:
        job = self._jobs.get(check_job_id(job_id))
        if job is None:
            raise JobNotFound(job_id)
        return job

    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return matching jobs, oldest id first; see :meth:`Storage.find`."""
        with self._lock:
            matching = [
                job
                for job in self._jobs.values()
                if (state is None or job.state is state) and (queue is None or job.queue == queue)
            ]
        matching.sort(key=lambda job: job.id)
        return matching[:limit]

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Count jobs per (queue, state); see :meth:`Storage.counts`."""
        with self._lock:
            return dict(Counter((job.queue, job.state) for job in self._jobs.values()))

    def _live_head(self, heap: list[Any]) -> Any:
        """The first live entry of a heap (dropping stale ones), or ``None``."""
        while heap and self._entry.get(heap[0][-2]) != heap[0][-1]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job; see :meth:`Storage.next_run_at`."""
        times: list[datetime] = []
        with self._lock:
            names = list(self._queues) if queues is None else queues
            for name in names:
                heaps = self._queues.get(name)
                if heaps is None or name in self._paused:
                    continue
                ready: _Ready | None = self._live_head(heaps.ready)
                if ready is not None:
                    times.append(ready[1])
                delayed: _Delayed | None = self._live_head(heaps.delayed)
                if delayed is not None:
                    times.append(delayed[0])
        return min(times) if times else None

    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue; see :meth:`Storage.oldest_due`."""
        oldest: dict[str, datetime] = {}
        with self._lock:
            for job in self._jobs.values():
                due = job.state in READY_STATES and job.run_at is not None and job.run_at <= now
                if due and (job.queue not in oldest or job.run_at < oldest[job.queue]):  # type: ignore[operator]
                    oldest[job.queue] = job.run_at  # type: ignore[assignment]
        return oldest

    def orphans(self, *, now: datetime) -> list[Job]:
        """Running jobs of workers no longer registered; see :meth:`Storage.orphans`."""
        with self._lock:
            return [
                job
                for job in self._jobs.values()
                if job.state is JobState.RUNNING and job.worker_id not in self._workers
            ]

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete old finished jobs; see :meth:`Storage.purge`."""
        wanted = set(states) & FINISHED_STATES
        with self._lock:
            doomed = [
                job.id
                for job in self._jobs.values()
                if job.state in wanted and job.finished_at is not None and job.finished_at < before
            ]
            for job_id in doomed:
                del self._jobs[job_id]
            self._forget_keys(set(doomed))
        return len(doomed)

    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        """Mark a worker live; its running jobs are not orphans."""
        with self._lock:
            self._workers.add(worker_id)

    def unregister_worker(self, worker_id: str) -> None:
        """Mark a worker gone; its running jobs (if any) become orphans."""
        with self._lock:
            self._workers.discard(worker_id)

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Keep the worker's latest record while it stays registered."""
        with self._lock:
            self._worker_info[info.id] = info

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Records of registered workers, by id; see :meth:`Storage.live_workers`."""
        with self._lock:
            for gone in set(self._worker_info) - self._workers:
                del self._worker_info[gone]
            return [self._worker_info[k] for k in sorted(self._worker_info)]

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Stop claims from ``queue``; see :meth:`Storage.pause_queue`."""
        with self._lock:
            if queue in self._paused:
                return False
            self._paused.add(queue)
            return True

    def resume_queue(self, queue: str) -> bool:
        """Allow claims from ``queue`` again; see :meth:`Storage.resume_queue`."""
        with self._lock:
            if queue not in self._paused:
                return False
            self._paused.discard(queue)
            return True

    def paused_queues(self) -> frozenset[str]:
        """The paused queues; see :meth:`Storage.paused_queues`."""
        with self._lock:
            return frozenset(self._paused)

    def find_page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Matching jobs, newest id first; see :meth:`Storage.find_page`."""
        with self._lock:
            matching = [
                job
                for job in self._jobs.values()
                if (state is None or job.state is state)
                and (queue is None or job.queue == queue)
                and (handler is None or job.handler == handler)
            ]
        matching.sort(key=lambda job: job.id, reverse=True)
        return matching[offset : offset + limit]
