"""The JSON flat-file store: one file per job, a directory per state, atomic renames.

The layout is described in :mod:`backrun.storage.jsonfile.layout`, the
grab/publish/heal moves in :mod:`backrun.storage.jsonfile.core`. In short:

* enqueue writes the record to ``tmp/`` (flushed and fsynced), links it into
  its queue's ``ready/`` directory under a name that sorts by priority, due
  time and id, and fsyncs that directory: durable once :meth:`add` returns,
  and never half-visible;
* claim renames the file from ``ready/`` into ``running/`` under a name that
  records the claim (token, start, worker): one rename, exactly one winner,
  and only names are read to choose. The lease expiry is the file's mtime;
* every later write by the owner grabs the running file first, so a stale
  owner changes nothing and gets :class:`~backrun.errors.LeaseLost`;
* a worker is alive while it holds ``flock`` on ``workers/<id>.lock``.

With ``fsync=True`` records that must survive power loss (new jobs, retries,
requeues) are fsynced before returning; completions are flushed by a
background :class:`~backrun.storage.jsonfile.flush.CompletionFlusher` within
about 5 ms, so a power failure inside that window may make a completed job run
again (at-least-once), never lose it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from backrun.errors import StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, Progress
from backrun.limits import HandlerLimits, LimitedClaim
from backrun.storage.base import Capabilities, Storage
from backrun.workerinfo import WorkerInfo

from .batch import Batches
from .changes import Changes
from .claims import Claims
from .core import StoreContext, storage_errors
from .enqueue import Enqueue
from .fileformat import ensure_format
from .files import SUBDIRS, prepare_root
from .flush import CompletionFlusher
from .layout import check_worker_id
from .limits import Limits
from .ops import Ops
from .owner import OwnerWrites
from .pages import Pages
from .queries import Reads
from .results import Results
from .unique import UniqueKeys
from .upkeep import Upkeep
from .watch import Watcher

__all__ = ["JsonFileStorage"]

logger = logging.getLogger("backrun.storage.jsonfile")


class JsonFileStorage(Storage):
    """Jobs as JSON files under ``path``; safe for many threads and processes on one machine.

    Args:
        path: the store's directory; created 0700 if missing. An existing one
            that is a symlink, not ours, or writable by others is refused.
        fsync: flush new jobs and retries to the disk before returning.
        retention: how long finished jobs are kept before :meth:`maintain` purges them.
        poll_interval: seconds idle workers wait before looking for jobs
            written by other processes (see also :meth:`subscribe`).
        tmp_grace: age after which a leftover temporary file is deleted.
        watch_interval: how often the :meth:`subscribe` watcher checks the
            ready directories' change times.
        create: ``False`` opens only an existing store and creates nothing
            (inspection: a typo or a wrong directory is refused, not turned
            into a store).
        ready_window: how many waiting jobs per queue are kept parsed in
            memory (default 4096); the rest cost only their id, so a backlog
            of any size costs a worker a bounded amount of memory.

    Raises:
        StorageError: the directory is unsafe or cannot be created, or
            (``create=False``) is not a backrun store.
    """

    capabilities = Capabilities(unique_jobs=True, limits=True)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        retention: timedelta = timedelta(days=7),
        poll_interval: float = 0.2,
        tmp_grace: timedelta = timedelta(minutes=10),
        watch_interval: float = 0.01,
        create: bool = True,
        ready_window: int | None = None,
    ) -> None:
        root = os.path.abspath(os.fspath(path))
        if not create:
            check_is_store(root)
        prepare_root(root)
        ensure_format(root)
        if ready_window is not None and (
            isinstance(ready_window, bool) or not isinstance(ready_window, int) or ready_window < 1
        ):
            raise ValueError(f"ready_window must be a positive int, not {ready_window!r}")
        self.path = root
        self.fsync = fsync
        self.poll_interval = poll_interval
        ctx = self.ctx = StoreContext(
            root, fsync=fsync, retention=retention, tmp_grace=tmp_grace, ready_window=ready_window
        )
        self.watcher = Watcher(ctx, watch_interval)
        ctx.is_watched = lambda: self.watcher.active
        # The parts, each over the shared context, given the parts it calls.
        self.ops = Ops(ctx)
        self.reads = Reads(ctx, ops=self.ops)
        self.pages = Pages(ctx, reads=self.reads)
        self.batches = Batches(ctx)
        self.enqueue = Enqueue(ctx, batches=self.batches, reads=self.reads)
        self.results = Results(ctx, enqueue=self.enqueue, reads=self.reads)
        self.upkeep = Upkeep(ctx, batches=self.batches, reads=self.reads, results=self.results)
        self.changes = Changes(ctx, reads=self.reads, upkeep=self.upkeep)
        self.unique = UniqueKeys(ctx, enqueue=self.enqueue, reads=self.reads, upkeep=self.upkeep)
        self.claims = Claims(ctx, changes=self.changes, ops=self.ops, reads=self.reads)
        self.limits = Limits(ctx, claims=self.claims, ops=self.ops, reads=self.reads)
        self.owner = OwnerWrites(
            ctx, changes=self.changes, limits=self.limits, results=self.results
        )
        self._closed = False

    @property
    def retention(self) -> timedelta:
        """How long finished jobs are kept."""
        return self.ctx.retention

    @property
    def tmp_grace(self) -> timedelta:
        """Age after which a leftover temporary file is deleted."""
        return self.ctx.tmp_grace

    @property
    def flusher(self) -> CompletionFlusher:
        """The completion flusher (``fsync=True``): see :mod:`backrun.storage.jsonfile.flush`."""
        return self.ctx.flusher

    def watched(self) -> bool:
        """True if the :meth:`subscribe` watcher runs (it wakes workers on changes)."""
        return self.watcher.active

    def __repr__(self) -> str:
        return f"JsonFileStorage({self.path!r}, fsync={self.fsync})"

    # -- the store contract, each operation done by its part ---------------------

    def add(self, job: Job) -> None:
        """Persist a new job; durable once this returns. See :meth:`Storage.add`."""
        self.enqueue.add(job)

    def add_many(self, jobs: Sequence[Job]) -> None:
        """Persist several new jobs; all or none are added, even if the process is killed."""
        self.enqueue.add_many(jobs)

    def add_once(self, job: Job) -> bool:
        """Add a job at most once per id, under its creation lock; see :meth:`Storage.add_once`."""
        return self.enqueue.add_once(job)

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`."""
        return self.unique.add_unique(jobs, now=now, connection=connection)

    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs by renaming them; see :meth:`Storage.claim`."""
        return self.claims.claim(
            queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease
        )

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
        return self.limits.claim_limited(
            queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease, limits=limits
        )

    def update(self, job: Job) -> None:
        """Write a claimed job as the owner of its claim; see :meth:`Storage.update`."""
        self.owner.update(job)

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress in its claim's file; see the base class."""
        self.results.record_progress(job, progress)

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew leases (file mtimes); return the ids to stop. See :meth:`Storage.heartbeat`."""
        return self.owner.heartbeat(jobs, worker_id=worker_id, now=now, lease_until=lease_until)

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Return the ids among ``job_ids`` that are RUNNING with a cancel requested."""
        return self.changes.cancel_requests(job_ids)

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        return self.changes.cancel(job_id, now=now)

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        return self.changes.requeue(job_id, now=now)

    def get(self, job_id: str) -> Job | None:
        """Return the job, or ``None``; see :meth:`Storage.get`."""
        return self.reads.get(job_id)

    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return matching jobs, oldest id first; see :meth:`Storage.find`."""
        return self.reads.find(state=state, queue=queue, limit=limit)

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Count jobs per (queue, state) from file names; see :meth:`Storage.counts`."""
        return self.reads.counts()

    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job; see :meth:`Storage.next_run_at`."""
        return self.reads.next_run_at(queues=queues)

    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue; see :meth:`Storage.oldest_due`."""
        return self.reads.oldest_due(now=now)

    def orphans(self, *, now: datetime) -> list[Job]:
        """Running jobs whose worker's lock is free; see :meth:`Storage.orphans`."""
        return self.reads.orphans(now=now)

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete finished jobs whose finished_at (file mtime) is before ``before``."""
        return self.upkeep.purge(before=before, states=states)

    def maintain(self, *, now: datetime) -> None:
        """The store's housekeeping, then (as often as purges) the records of free keys."""
        self.unique.maintain(now=now)

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
        return self.pages.find_page(
            state=state, queue=queue, handler=handler, offset=offset, limit=limit
        )

    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Finishes per state and bucket, from mtimes; see :meth:`Storage.finish_counts`."""
        return self.pages.finish_counts(since=since, until=until, buckets=buckets)

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Replace the worker's record; see :meth:`Storage.publish_worker`."""
        self.ops.publish_worker(info, ttl=ttl)

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Records of workers whose lock is held; see :meth:`Storage.live_workers`."""
        return self.ops.live_workers(now=now)

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Mark ``queue`` paused; see :meth:`Storage.pause_queue`."""
        return self.ops.pause_queue(queue, now=now)

    def resume_queue(self, queue: str) -> bool:
        """Clear ``queue``'s pause; see :meth:`Storage.resume_queue`."""
        return self.ops.resume_queue(queue)

    def paused_queues(self) -> frozenset[str]:
        """The paused queues; see :meth:`Storage.paused_queues`."""
        return self.ops.paused_queues()

    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        """Take this worker's lock and hold it until :meth:`unregister_worker` or exit."""
        path = os.path.join(self.ctx.workers_dir, check_worker_id(worker_id) + ".lock")
        with storage_errors("register_worker"):
            try:
                self.ctx.locks.acquire(path)
            except TimeoutError:
                raise StorageError(f"worker id {worker_id} is in use by a live process") from None

    def unregister_worker(self, worker_id: str) -> None:
        """Release this worker's lock: its running jobs (if any) become orphans."""
        path = os.path.join(self.ctx.workers_dir, check_worker_id(worker_id) + ".lock")
        with storage_errors("unregister_worker"):
            self.ctx.locks.release(path, unlink=True)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` soon after any process adds a waiting job or asks a cancel.

        A watcher thread stats the ready directories and ``cancels/`` every
        ``watch_interval`` seconds; see :mod:`backrun.storage.jsonfile.watch`.
        """
        return self.watcher.subscribe(callback)

    def close(self) -> None:
        """Stop the watcher and release every lock this store holds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.watcher.stop()
        self.ctx.flusher.close()
        self.ctx.locks.release(self.ctx.session_path, unlink=not self.ctx.stranded)
        self.ctx.locks.release_all()


def check_is_store(root: str) -> None:
    """Refuse ``root`` unless it is an existing store directory (for ``create=False``).

    Raises:
        StorageError: missing, not a directory, or without a store's subdirectories.
    """
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise StorageError(f"no job store at {root}: it {what}")
    missing = [name for name in SUBDIRS if not os.path.isdir(os.path.join(root, name))]
    if missing:
        raise StorageError(f"{root} is not a backrun job store (it has no {missing[0]}/)")
