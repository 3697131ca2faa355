"""The storage contract every backend honours.

A store keeps plain :class:`~backrun.jobs.Job` records; it never sees handlers
or pydantic models. The contract below is checked by one test suite run
against every backend (``tests/storage/test_contract.py``).

Ownership rules, which make "never run a finished job again" hold:

* ``claim`` is the only way a job becomes RUNNING; each claim stamps a fresh
  ``claim_token``, and exactly one caller receives each claimed job.
* ``update`` is the only way a RUNNING job changes, and only with the token of
  its current claim. A stale writer (its claim was released, recovered or
  finished) gets :class:`~backrun.errors.LeaseLost` and changes nothing.
* ``cancel`` and ``requeue`` change jobs nobody owns (and request the owner to
  stop, for a running job); they never race a claim into two owners.
* ``cancel_requested`` belongs to the store once set: an owner's ``update``
  that leaves the job RUNNING keeps it set whatever the owner's copy says
  (the owner read its copy before the cancel came).
* Every state change is one listed in :data:`backrun.jobs.TRANSITIONS`.

What a store can do beyond this is declared, not guessed: see
:class:`Capabilities` and :attr:`Storage.capabilities`.

Writing a backend: subclass :class:`Storage`, implement the abstract
methods, declare its :class:`Capabilities`, and add a factory for it to
``BACKENDS`` in ``tests/storage/conftest.py``; the contract suite then runs
against it unchanged.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from backrun.jobs import FINISHED_STATES, Job, JobState, Progress, check_job_id
from backrun.limits import HandlerLimits, LimitedClaim
from backrun.workerinfo import WorkerInfo

__all__ = ["READY_STATES", "Capabilities", "Storage"]

log = logging.getLogger("backrun.storage")

READY_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED})
"""States a job can be claimed from once its ``run_at`` has come."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store offers beyond the contract every store honours.

    The engine asks these instead of probing a store's methods, so a backend
    says what it can do in one place, and the contract suite tests what it says.
    """

    transactional_enqueue: bool = False
    """:meth:`Storage.add_in_transaction` writes through a caller's open
    database connection, so jobs commit or roll back with the caller's own
    writes (``enqueue(..., connection=)``)."""

    unique_jobs: bool = False
    """:meth:`Storage.add_unique` stores jobs with a ``unique_key`` atomically
    (``enqueue(..., unique_key=)``)."""

    limits: bool = False
    """:meth:`Storage.claim_limited` enforces handlers' concurrency and rate
    limits across every process on the store."""


class Storage(ABC):
    """Where jobs live. Every method is thread-safe.

    Attributes:
        poll_interval: seconds an idle worker waits before asking again for
            jobs another process may have written; ``None`` when every new job
            is announced in-process or through :meth:`subscribe`.
        capabilities: what this store offers beyond the contract (a class
            attribute; the default offers nothing extra).
    """

    poll_interval: float | None = None
    capabilities: ClassVar[Capabilities] = Capabilities()

    def add(self, job: Job) -> None:
        """Persist a new job (SCHEDULED or QUEUED); durable once this returns.

        The default is :meth:`add_many` with one job.

        Raises:
            ValueError: the id is malformed, the job is not SCHEDULED or QUEUED
                with a ``run_at``, or a job with this id exists already (in
                any state, finished ones included, until purged).
            StorageError: the store could not write; nothing is visible.
        """
        self.add_many([job])

    @abstractmethod
    def add_many(self, jobs: Sequence[Job]) -> None:
        """Persist several new jobs, all or none; durable once this returns.

        ``Engine.enqueue_many`` promises its callers all or none, so a store
        must never leave part of a batch visible: not when one id exists
        already, not when a write fails half-way (undo, or write in one
        transaction or one rename).

        Raises:
            ValueError: as :meth:`add`, for any job, or two jobs of the batch
                share an id; nothing was added.
            StorageError: the store could not write; nothing is visible.
        """

    def add_in_transaction(self, jobs: Sequence[Job], *, connection: Any) -> None:
        """Persist new jobs through the caller's open database connection.

        Only stores whose :attr:`capabilities` declare
        ``transactional_enqueue`` implement this. The jobs become visible
        when, and only if, the caller's transaction commits.

        Raises:
            TypeError: this store cannot join a caller's transaction.
            ValueError: as :meth:`add_many`.
        """
        raise TypeError(
            f"{type(self).__name__} cannot join your transaction (connection=); "
            "use a store whose capabilities declare transactional_enqueue, "
            "such as PostgresStorage"
        )

    def add_once(self, job: Job) -> bool:
        """Add a job whose id names what it stands for (a schedule's tick), at most once.

        However many callers, threads or processes add the same id at once,
        exactly one of them adds it; later calls find it taken, whatever state
        the job is in by then. This is the whole guarantee: no caller checks
        first and inserts after.

        Returns:
            True if this call added the job; False if the id was taken.

        Raises:
            ValueError: the id is malformed, or the job is not waiting.
            StorageError: the store could not write.
        """
        check_job_id(job.id)
        try:
            self.add(job)
        except ValueError:
            if self.get(job.id) is None:
                raise
            return False
        return True

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add new jobs, some with a ``unique_key``, deduplicating atomically; all or none.

        A job's key ``(handler, unique_key)`` is *taken* by the stored job that
        last took it while that job is SCHEDULED, QUEUED or RUNNING, while
        ``now`` is before its ``unique_until``, or while it is younger than the
        new job's own span (``unique_until - created_at``). A job whose key
        is taken is not stored: the job holding the key is returned in its
        place. An earlier job of the batch with the same key takes it too
        (in-batch duplicates are deduplicated). However many callers, threads
        or processes add one key at once, exactly one job is stored and every
        caller gets it: the check and the insert are one atomic step of the
        store, never a look then an insert. Jobs without a key are added as by
        :meth:`add_many`. :meth:`requeue` never looks at keys.

        Only stores whose :attr:`capabilities` declare ``unique_jobs`` implement it.
        ``connection`` (stores that also declare ``transactional_enqueue``): a
        caller's open DB-API connection; the jobs and their keys then commit or
        roll back with the caller's transaction, as :meth:`add_in_transaction`.

        Returns:
            One job per given job, in order: the job itself if it was stored,
            else the job holding its key.

        Raises:
            ValueError: as :meth:`add_many`.
            TypeError: ``connection`` given to a store that cannot join it.
            StorageError: the store could not write; nothing new is visible.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot store unique jobs")

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
        """:meth:`claim`, honouring handlers' limits over every process on the store.

        A job with ``limited`` set whose handler has limits in ``limits`` is
        taken only if (a) fewer than ``max_concurrency`` jobs of its handler
        with its ``concurrency_key`` are RUNNING, and (b) fewer than
        ``rate_limit.n`` jobs of its handler were claimed in the ``per`` before
        ``now``. Otherwise it is skipped, unchanged (no attempt is charged) and
        the next eligible job is considered, so a limited job never holds up
        others. A RUNNING job holds its concurrency slot until it leaves
        RUNNING by any :meth:`update` (a finish, a retry, a release, an
        orphan's rescue), so a slot cannot leak. When a limited job leaves
        RUNNING, :meth:`subscribe` callbacks fire, in every process the
        store's notifications reach.

        Only stores whose :attr:`capabilities` declare ``limits`` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot enforce limits")

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """Return the job, or ``None`` if there is none with this id.

        Raises:
            ValueError: ``job_id`` is not a well-formed id.
        """

    @abstractmethod
    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        """Atomically take up to ``limit`` due jobs for ``worker_id``.

        Due means SCHEDULED or QUEUED with ``run_at <= now``, in one of
        ``queues`` (any queue when ``None``). Jobs are taken highest
        ``priority`` first, then earliest ``run_at``, then oldest id. Each
        returned job is RUNNING with ``attempts`` one higher, ``worker_id``,
        ``started_at=now``, ``lease_expires_at=now + lease`` and a fresh
        ``claim_token``. Each job is returned to exactly one claimer.
        """

    @abstractmethod
    def update(self, job: Job) -> None:
        """Write a claimed job, as the owner of its current claim.

        The stored job must be RUNNING with the same ``claim_token`` as
        ``job``; the new record may be in any state (a finish, a reschedule, a
        release back to QUEUED, or a still-RUNNING job with a new lease).

        A SUCCEEDED record carries the job's ``result``, and its ``followups``
        (``then=``) are enqueued in the same atomic step: the jobs of
        :func:`backrun.followups.followup_jobs` (``now`` = ``finished_at``) exist
        exactly when the success is visible. A follow-up whose id exists already
        (created by an earlier attempt of a store that creates them before it
        publishes the success) is not added again. Other states add none.

        Raises:
            LeaseLost: the stored job is not RUNNING under this claim; nothing
                was written.
            StorageError: the store could not write.
        """

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
        """:meth:`update` a finished attempt, then claim the slot's next jobs.

        A worker slot that finishes a job and goes on claiming makes this one
        call. The claim is :meth:`claim_limited` when ``limits`` is given, else
        :meth:`claim`. Stores override it to do both in one step (the memory
        store: under one lock acquisition instead of two); this default makes
        the two calls. Once the write landed it stands: a claim that then
        fails claims nothing (the error is logged, the slot claims again).

        Raises:
            LeaseLost: as :meth:`update`; nothing was written or claimed.
            StorageError: the write failed; nothing was claimed.
        """
        self.update(job)
        try:
            if limits:
                return self.claim_limited(
                    queues=queues,
                    limit=limit,
                    now=now,
                    worker_id=worker_id,
                    lease=lease,
                    limits=limits,
                )
            return LimitedClaim(
                self.claim(queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease)
            )
        except Exception:
            log.warning("claim after job %s's update failed", job.id, exc_info=True)
            return LimitedClaim([])

    def record_progress(self, job: Job, progress: Progress) -> None:  # noqa: B027
        """Store a running job's ``progress``, as the owner of its claim (``job.claim_token``).

        Only the progress changes: nothing else of the stored record, not its
        lease. Callers throttle (a worker writes at most once a second per
        job). The default stores nothing; the job's last progress is then
        stored with its outcome.

        Raises:
            LeaseLost: the stored job is not RUNNING under this claim.
            StorageError: the store could not write.
        """

    @abstractmethod
    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew this worker's liveness and the leases of its running ``jobs``.

        Returns:
            The ids among ``jobs`` whose attempt should stop: cancellation was
            requested, or the claim is no longer this worker's.
        """

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Return the ids among ``job_ids`` that are RUNNING with a cancel requested.

        A worker calls this when :meth:`subscribe`'s callback fires while it
        runs attempts (at most every ~150 ms), so a cancel made by another
        process reaches the handler's ``ctx.cancelled`` within a second
        instead of at the next heartbeat. It only reads: leases are untouched.
        Ids that are unknown, or no longer RUNNING, are left out. This default
        reads each job with :meth:`get`; stores override it with one query.
        """
        requested: set[str] = set()
        for job_id in job_ids:
            job = self.get(job_id)
            if job is not None and job.state is JobState.RUNNING and job.cancel_requested:
                requested.add(job_id)
        return requested

    @abstractmethod
    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job and return it as it now stands.

        SCHEDULED or QUEUED: becomes CANCELLED at once (``finished_at=now``).
        RUNNING: ``cancel_requested`` is set; its worker stops the attempt and
        records CANCELLED. A store whose :meth:`subscribe` reaches other
        processes calls their callbacks for this change too, so the owner
        learns of it through :meth:`cancel_requests` within a second.
        Finished: returned unchanged.

        Raises:
            JobNotFound: no job has this id.
        """

    @abstractmethod
    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now and return it as it now stands.

        DEAD or CANCELLED: back to QUEUED with ``attempts=0`` and
        ``run_at=now``, its error history kept. SCHEDULED: due now.

        Raises:
            JobNotFound: no job has this id.
            ValueError: the job is QUEUED, RUNNING or SUCCEEDED.
        """

    @abstractmethod
    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return up to ``limit`` jobs matching the filters, oldest id first."""

    @abstractmethod
    def counts(self) -> dict[tuple[str, JobState], int]:
        """Return the number of jobs per ``(queue, state)``; absent pairs are zero."""

    @abstractmethod
    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Return the earliest ``run_at`` of a SCHEDULED or QUEUED job, or ``None``.

        The time may be in the past: a job is due. Workers sleep until it.
        """

    @abstractmethod
    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Return, per queue with due jobs, the earliest ``run_at`` among them."""

    @abstractmethod
    def orphans(self, *, now: datetime) -> list[Job]:
        """Return RUNNING jobs whose worker is gone, judged by the store's liveness.

        A live worker's job is never an orphan, however long it runs. The
        caller rescues each with :meth:`update`, using the orphan's token.
        """

    @abstractmethod
    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete jobs in ``states`` (finished ones only) that finished before ``before``.

        Returns:
            How many jobs were deleted.
        """

    def maintain(self, *, now: datetime) -> None:  # noqa: B027
        """Housekeeping every worker calls every few seconds.

        Stores use it for their own chores: purging finished jobs past their
        retention, removing stale temporary files, healing what a crash left.
        """

    def register_worker(self, worker_id: str, *, now: datetime) -> None:  # noqa: B027
        """Announce a live worker (a lock file, a row); its jobs stop being orphans."""

    def unregister_worker(self, worker_id: str) -> None:  # noqa: B027
        """Announce that a worker stopped cleanly."""

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when another process adds a due job, if the store can tell.

        Stores that can also call it when a RUNNING job's cancel is requested
        (from any process): workers then ask :meth:`cancel_requests`. A
        callback must return quickly; it may fire for changes that concern no
        one (callers re-check the store).

        Returns:
            A function that unsubscribes.
        """
        return _noop

    # -- operations: live workers and paused queues -----------------------------

    def find_page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Return up to ``limit`` matching jobs, newest id first, after skipping ``offset``.

        For browsing (the dashboard): stores override this to read no more
        than the page needs, where their layout allows. This fallback reads
        every job matching ``state`` and ``queue``.
        """
        matching = self.find(state=state, queue=queue, limit=2**62)
        if handler is not None:
            matching = [job for job in matching if job.handler == handler]
        matching.reverse()
        return matching[offset : offset + limit]

    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Count jobs finished in ``[since, until)``, per finished state and time bucket.

        The span is cut into ``buckets`` equal parts, oldest first. This
        fallback reads every finished job; stores override it.
        """
        width = (until - since) / buckets
        counts = {state: [0] * buckets for state in FINISHED_STATES}
        for state in FINISHED_STATES:
            for job in self.find(state=state, limit=2**62):
                at = job.finished_at
                if at is not None and since <= at < until:
                    counts[state][min(int((at - since) / width), buckets - 1)] += 1
        return counts

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:  # noqa: B027
        """Record what a registered worker does now, for :meth:`live_workers`.

        The record lives until the worker unregisters or dies, or for at most
        ``ttl`` without a newer one, whichever the store can tell first.
        Stores that keep no such records ignore it.
        """

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Return the latest record of every live worker that published one, by id."""
        return []

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Stop every worker on this store from claiming jobs of ``queue``.

        Enqueues still succeed; running jobs finish. From the moment this
        returns, :meth:`claim` takes nothing from ``queue`` and
        :meth:`next_run_at` ignores it. Persists as long as the store does.

        Returns:
            False when the queue was paused already.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pause queues")

    def resume_queue(self, queue: str) -> bool:
        """Let workers claim from ``queue`` again.

        Returns:
            False when the queue was not paused.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pause queues")

    def paused_queues(self) -> frozenset[str]:
        """Return the names of the paused queues."""
        return frozenset()

    def close(self) -> None:  # noqa: B027
        """Release connections, locks and threads. Idempotent."""


def _noop() -> None:
    return None
