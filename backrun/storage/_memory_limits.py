"""Unique jobs and limited claims for the in-process store, all under its one lock.

Uniqueness: ``keys`` maps ``(handler, unique_key)`` to the id of the job that
took it; a new job's key is free when that job no longer waits or runs and
its ``unique_until`` has passed (or it was purged). Concurrency: the ids of
RUNNING limited jobs per ``(handler, concurrency_key)``, added by a limited
claim and removed by the update that moves the job out of RUNNING (a finish,
a retry, a release or an orphan's rescue). Rate: each handler's recent
starts, oldest first.
"""

from __future__ import annotations

import threading
from bisect import bisect_right, insort
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from backrun.jobs import Job, JobState, check_job_id, new_claim_token
from backrun.limits import (
    CONCURRENCY,
    RATE,
    HandlerLimits,
    LimitedClaim,
    forget_before,
    holds_key,
    limits_for,
)

from .base import READY_STATES

__all__ = ["MemoryLimits"]

Group = tuple[str, str | None]


class MemoryLimits:
    """The bookkeeping above, for :class:`~backrun.storage.memory.MemoryStorage`."""

    _lock: threading.Lock
    _jobs: dict[str, Job]
    _callbacks: list[Callable[[], None]]
    _paused: set[str]

    def _init_limits(self) -> None:
        self._keys: dict[tuple[str, str], str] = {}
        self._running_groups: dict[Group, set[str]] = {}
        self._starts: dict[str, list[datetime]] = {}

    if TYPE_CHECKING:

        def _index(self, job: Job) -> None: ...
        def _promote_all(self, queues: Collection[str] | None, now: datetime) -> list[Any]: ...
        def _pop_best(self, candidates: list[Any]) -> str | None: ...

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`."""
        if connection is not None:
            raise TypeError(f"{type(self).__name__} cannot join your transaction (connection=)")
        for job in jobs:
            check_job_id(job.id)
            if job.state not in READY_STATES or job.run_at is None:
                raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        if len({job.id for job in jobs}) != len(jobs):
            raise ValueError("duplicate job ids in batch")
        with self._lock:
            if any(job.id in self._jobs for job in jobs):
                raise ValueError("a job with one of these ids exists already")
            result: list[Job] = []
            taken: dict[tuple[str, str], Job] = {}
            for job in jobs:
                if job.unique_key is None:
                    result.append(job)
                    continue
                key = (job.handler, job.unique_key)
                holder = taken.get(key)
                if holder is None:
                    stored = self._jobs.get(self._keys.get(key, ""))
                    holder = stored if stored and holds_key(stored, now, job) else job
                    taken[key] = holder
                result.append(holder)
            for job, stored in zip(jobs, result, strict=True):
                if stored is job:
                    self._jobs[job.id] = job
                    self._index(job)
            for key, holder in taken.items():
                self._keys[key] = holder.id
            return result

    def claim_limited(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
        limits: Mapping[str, HandlerLimits],
    ) -> LimitedClaim:
        """Claim, skipping jobs a limit holds back; see :meth:`Storage.claim_limited`."""
        changes = {
            "state": JobState.RUNNING,
            "worker_id": worker_id,
            "started_at": now,
            "lease_expires_at": now + lease,
        }
        with self._lock:
            return self._claim_limited_locked(queues, limit, now, changes, limits)

    def _claim_limited_locked(
        self,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        changes: dict[str, Any],
        limits: Mapping[str, HandlerLimits],
    ) -> LimitedClaim:
        """:meth:`claim_limited` with the lock held; ``changes`` as the plain claim's."""
        claimed: list[Job] = []
        waiting: list[tuple[str, str, str]] = []
        skipped: list[Job] = []
        retry_at: datetime | None = None
        candidates = self._promote_all(queues, now)
        while len(claimed) < limit:
            job_id = self._pop_best(candidates)
            if job_id is None:
                break
            job = self._jobs[job_id]
            rules = limits_for(job, limits)
            if rules is not None:
                held, opens = self._held(job, rules, now)
                if held is not None:
                    skipped.append(job)
                    waiting.append((job.id, job.handler, held))
                    if opens is not None and (retry_at is None or opens < retry_at):
                        retry_at = opens
                    continue
            job = job.replace(**changes, attempts=job.attempts + 1, claim_token=new_claim_token())
            self._jobs[job_id] = job
            if rules is not None:
                self._running_groups.setdefault((job.handler, job.concurrency_key), set()).add(
                    job.id
                )
                if rules.rate_limit is not None:
                    # Sorted: a claimer's "now" may be older than another's.
                    insort(self._starts.setdefault(job.handler, []), now)
            claimed.append(job)
        for job in skipped:
            self._index(job)  # back where it was: same run_at and priority
        return LimitedClaim(claimed, waiting, retry_at)

    def _held(
        self, job: Job, rules: HandlerLimits, now: datetime
    ) -> tuple[str | None, datetime | None]:
        """Which limit holds ``job`` back now (``None``: none), and when a rate window opens."""
        if rules.max_concurrency is not None:
            running = self._running_groups.get((job.handler, job.concurrency_key), ())
            if len(running) >= rules.max_concurrency:
                return CONCURRENCY, None
        rate = rules.rate_limit
        if rate is not None:
            starts = self._starts.get(job.handler)
            if starts is not None:
                # Every start after now - per counts, later ones included: any
                # window of length per then holds at most n starts.
                del starts[: bisect_right(starts, forget_before(now, rate))]
                counted = len(starts) - bisect_right(starts, now - rate.per)
                if counted >= rate.n:
                    return RATE, starts[-rate.n] + rate.per
        return None, None

    def _forget_keys(self, purged: set[str]) -> None:
        """Drop the keys of purged jobs (lock held): they hold nothing any more."""
        if purged:
            for key in [k for k, job_id in self._keys.items() if job_id in purged]:
                del self._keys[key]

    def _left_running(self, stored: Job, new: Job) -> bool:
        """Free ``stored``'s slot if ``new`` leaves RUNNING (lock held); True if it had one."""
        if not stored.limited or new.state is JobState.RUNNING:
            return False
        group = self._running_groups.get((stored.handler, stored.concurrency_key))
        if group is None or stored.id not in group:
            return False
        group.discard(stored.id)
        if not group:
            del self._running_groups[(stored.handler, stored.concurrency_key)]
        return True
