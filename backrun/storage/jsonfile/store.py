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
import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta

from backrun.clock import utcnow
from backrun.errors import LeaseLost, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import dump_job
from backrun.storage import fs
from backrun.storage.base import READY_STATES, Capabilities, Storage

from .core import storage_errors, to_ns
from .fileformat import ensure_format
from .files import SUBDIRS, prepare_root
from .flush import CompletionFlusher
from .layout import (
    FINISHED_DIRS,
    RunningName,
    check_token,
    check_worker_id,
    finished_name,
    parse_ready,
    parse_running,
    running_name,
    to_key,
)
from .limits import LimitsMixin
from .ops import OpsMixin
from .pages import PagesMixin
from .results import ResultsMixin
from .ticks import has_marker, mark, tick_lock
from .watch import Watcher

__all__ = ["JsonFileStorage"]

logger = logging.getLogger("backrun.storage.jsonfile")


class JsonFileStorage(OpsMixin, PagesMixin, ResultsMixin, LimitsMixin, Storage):
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
        super().__init__(root, fsync=fsync)
        self.ready_window = ready_window
        self.path = root
        self.fsync = fsync
        self.retention = retention
        self.poll_interval = poll_interval
        self.tmp_grace = tmp_grace
        self._last_purge: datetime | None = None
        self._busy = False
        self._watcher = Watcher(self, watch_interval)
        self.flusher = CompletionFlusher()
        self._closed = False
        self._facts: dict[str, Job] = {}

    def watched(self) -> bool:
        """True if the :meth:`subscribe` watcher runs (it wakes workers on changes)."""
        return self._watcher.active

    def __repr__(self) -> str:
        return f"JsonFileStorage({self.path!r}, fsync={self.fsync})"

    # -- enqueue ----------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Persist a new job; durable once this returns. See :meth:`Storage.add`."""
        self.add_many([job])

    def add_many(self, jobs: Sequence[Job]) -> None:
        """Persist several new jobs; all or none are added, even if the process is killed.

        Several jobs are staged in ``tmp/`` and committed by one rename (see
        :mod:`backrun.storage.jsonfile.batch`): a kill before the commit
        leaves none of them, a kill after it all of them once any store's
        :meth:`maintain` has run.

        Raises:
            ValueError: an id is malformed or exists already, or a job is not waiting.
            StorageError: the store could not write; none of the jobs is visible.
        """
        plans: list[tuple[Job, str, str, str]] = []
        seen: set[str] = set()
        for job in jobs:
            check_job_id(job.id)
            if job.state not in READY_STATES or job.run_at is None:
                raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
            if job.id in seen:
                raise ValueError(f"job {job.id} appears twice in the batch")
            seen.add(job.id)
            plans.append((job, *self.waiting_path(job, job.created_at)))
        with storage_errors("enqueue"):
            for qenc in {qenc for _, qenc, _, _ in plans}:
                self.ensure_queue(qenc)
                if len(plans) > 1:  # one job is linked, which refuses a duplicate by itself
                    with self.mutex:
                        self.cache(qenc).refresh(0, force=True)
            for job, *_ in plans:
                if self._exists(job.id):
                    raise ValueError(f"job {job.id} exists already")
            self._write_new(plans)

    def add_once(self, job: Job) -> bool:
        """Add a job at most once per id, under its creation lock; see :meth:`Storage.add_once`."""
        check_job_id(job.id)
        if job.state not in READY_STATES or job.run_at is None:
            raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        with storage_errors("enqueue"), tick_lock(self.root, job.id):
            if has_marker(self.root, job.id):
                return False
            added = False
            if self.locate(job.id) is None:  # a creator killed before its marker
                try:
                    self.add(job)
                    added = True
                except ValueError:
                    pass
            mark(self.root, job.id, sync=self.fsync)
            return added

    def _exists(self, job_id: str) -> bool:
        if job_id in self.mine:
            return True
        with self.mutex:
            for cache in self.caches.values():
                if cache.holds(job_id):
                    return True
        for qenc in self.made:
            for sub in FINISHED_DIRS.values():
                try:
                    fs.lstat(os.path.join(self.qdir(qenc, sub), finished_name(job_id)))
                    return True
                except FileNotFoundError:
                    pass
        return False

    def _write_new(self, plans: list[tuple[Job, str, str, str]]) -> None:
        records = [dump_job(job) for job, *_ in plans]
        if len(plans) > 1:
            self.write_batch(records, [(directory, name) for _, _, directory, name in plans])
        else:
            self._write_one(records[0], plans[0])
        with self.mutex:
            for _, qenc, directory, name in plans:
                if directory.endswith("ready"):
                    parsed = parse_ready(name)
                    assert parsed is not None
                    self.cache(qenc).add(parsed)

    def _write_one(self, record: bytes, plan: tuple[Job, str, str, str]) -> None:
        """One job: written aside, then linked into place (one step, so all or none)."""
        job, _, directory, name = plan
        tmp = self.files.write_tmp(record, sync=True)
        try:
            dest = os.path.join(directory, name)
            try:
                fs.link(tmp, dest)
            except FileExistsError:
                raise ValueError(f"job {job.id} exists already") from None
            except FileNotFoundError:
                self.ensure_dir(directory)
                fs.link(tmp, dest)
            try:
                self.files.sync_dir(directory)
            except Exception:
                self.files.discard(dest)
                raise
        finally:
            self.files.discard(tmp)

    # -- claim and the owner's writes -----------------------------------------

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
        check_worker_id(worker_id)
        now_key = to_key(now)
        lease_ns = to_ns(now + lease)
        claimed: list[Job] = []
        with storage_errors("claim"):
            # While claims keep coming back full, trust recent checks of q/ and later/.
            busy = self._busy
            qencs = self.claimable(self.queues_for(queues, fresh=not busy))
            with self.mutex:
                for qenc in qencs:
                    self.promote(qenc, now_key, fresh=not busy)
                    self.cache(qenc).refresh(now_key, watched=self._watcher.active)
            refills = 0
            while len(claimed) < limit:
                with self.mutex:
                    best: tuple[str, str] | None = None
                    for qenc in qencs:
                        name = self.cache(qenc).best_due(now_key)
                        if name is not None and (best is None or name < best[1]):
                            best = (qenc, name)
                    if best is None:
                        # A window spent mid-batch: refill it from the directory.
                        spent = [q for q in qencs if self.cache(q).spent(now_key)]
                        if not spent or refills >= limit:
                            break
                        refills += 1
                        for qenc in spent:
                            self.cache(qenc).refresh(now_key)
                        continue
                    qenc, name = best
                    cache = self.cache(qenc)
                    cache.discard(name)  # taken out under the lock: no other thread tries it
                parsed = parse_ready(name)
                assert parsed is not None
                rname = running_name(parsed.job_id, secrets.token_hex(8), now, worker_id)
                path = os.path.join(self.running_dir, rname)
                try:
                    fs.rename(os.path.join(cache.path, name), path)
                except FileNotFoundError:
                    continue  # another process took it
                except OSError:
                    with self.mutex:
                        cache.add(parsed)
                    raise
                with self.mutex:
                    self.mine[parsed.job_id] = rname
                job = self._claimed(path, rname, lease_ns, os.path.join(cache.path, name))
                if job is not None:
                    claimed.append(job)
        self._busy = len(claimed) >= limit
        return claimed

    def _claimed(self, path: str, rname: str, lease_ns: int, ready: str) -> Job | None:
        """Finish a won claim without raising: an error here must not strand the job.

        A live worker's jobs are never orphans, so a claim that failed after its
        rename would keep the job RUNNING until the worker stopped: on a read
        error the job is renamed back to its ready name instead.
        """
        rn = parse_running(rname)
        assert rn is not None
        try:
            fs.utime(path, lease_ns)
        except OSError as exc:
            logger.warning("job %s: could not stamp its lease: %s", rn.job_id, exc)
        try:
            job = self.read_running(rn, path, lease_ns=lease_ns)  # unreadable: quarantined
            if job is not None and job.cancel_requested:  # carried over: heartbeats see it
                self._request_cancel(path, job.id, rn.token)
            return job
        except OSError as exc:
            logger.error(
                "job %s: claim failed after taking it (%s); putting it back", rn.job_id, exc
            )
        self.forget_claim(rn.job_id, rn.token)
        try:
            fs.rename(path, ready)
        except OSError as exc:
            logger.error("job %s stays RUNNING until this worker stops: %s", rn.job_id, exc)
        return None

    def update(self, job: Job) -> None:
        """Write a claimed job as the owner of its claim; see :meth:`Storage.update`."""
        check_job_id(job.id)
        token = check_token(job.claim_token)
        if token is None:
            raise LeaseLost(f"job {job.id} carries no claim of this store")
        # Keyed by claim, not by job: the previous claim's write may still be
        # finishing (its grab not yet dropped) when this process claims the job again.
        claim = (job.id, token)
        with self.mutex:
            if claim in self.busy:
                raise LeaseLost(f"job {job.id} is being changed by another thread")
            self.busy.add(claim)
        try:
            with storage_errors("update"):
                self._update(job, token)
        finally:
            with self.mutex:
                self.busy.discard(claim)

    def _update(self, job: Job, token: str) -> None:
        rname = self.running_name_of(job.id, token)
        rn = None if rname is None else parse_running(rname)
        if rn is None:
            self.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
        src = os.path.join(self.running_dir, rn.name)
        if job.state is JobState.RUNNING and self.has_marker(job.id, token):
            job = job.replace(cancel_requested=True)
        dest, mtime = self._place(job, rn)
        tmp = self.files.write_tmp(
            dump_job(job), sync=job.state not in FINISHED_STATES, mtime_ns=mtime
        )
        try:
            grabbed = self.grab(src)
        except FileNotFoundError:
            self.files.discard(tmp)
            self.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim") from None
        except Exception:
            self.files.discard(tmp)
            raise
        if job.state is JobState.SUCCEEDED and job.followups:
            try:  # created while we hold the grab, before the success is visible
                self.add_followups(job)
            except Exception:
                self.files.discard(tmp)
                self.ungrab(grabbed)
                raise
        self._replace_grabbed(tmp, dest, grabbed, job)
        if job.state in FINISHED_STATES and self.files.fsync:
            self.flusher.note(dest, os.path.dirname(dest), self.running_dir)
        if job.state is JobState.SUCCEEDED and job.followups:
            self.forget_followups(job.id)
        if job.state is not JobState.RUNNING:
            self.release_slot(job, token)
            self.forget_claim(job.id, token)  # a cancel marker left behind is maintain()'s
            if job.progress is not None:
                self.forget_progress(job.id, token)
        elif dest != src:
            with self.mutex:
                if self.forget_claim(job.id, token) or job.id not in self.mine:
                    self.mine[job.id] = os.path.basename(dest)

    def _place(self, job: Job, rn: RunningName) -> tuple[str, int | None]:
        """Where a record in ``job.state`` goes, and the mtime its file should carry."""
        if job.state is JobState.RUNNING:
            name = self.new_running_name(job, rn)
            lease = job.lease_expires_at
            return os.path.join(self.running_dir, name), None if lease is None else to_ns(lease)
        if job.state in FINISHED_STATES:
            qenc, path = self.finished_path(job)
            self.ensure_queue(qenc)
            return path, to_ns(job.finished_at or utcnow())
        qenc, directory, name = self.waiting_path(job, job.started_at)
        self.ensure_queue(qenc)
        return os.path.join(directory, name), None

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew leases (file mtimes); return the ids to stop. See :meth:`Storage.heartbeat`."""
        stop: set[str] = set()
        lease_ns = to_ns(lease_until)
        with storage_errors("heartbeat"):
            for job in jobs:
                token = check_token(job.claim_token)
                rname = None if token is None else self.running_name_of(job.id, token)
                if token is None or rname is None:
                    stop.add(job.id)
                    continue
                try:
                    fs.utime(os.path.join(self.running_dir, rname), lease_ns)
                except FileNotFoundError:
                    stop.add(job.id)
                    self.forget_claim(job.id, token)
                    continue
                if self.has_marker(job.id, token):
                    stop.add(job.id)
        return stop

    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        """Take this worker's lock and hold it until :meth:`unregister_worker` or exit."""
        path = os.path.join(self.workers_dir, check_worker_id(worker_id) + ".lock")
        with storage_errors("register_worker"):
            try:
                self.locks.acquire(path)
            except TimeoutError:
                raise StorageError(f"worker id {worker_id} is in use by a live process") from None

    def unregister_worker(self, worker_id: str) -> None:
        """Release this worker's lock: its running jobs (if any) become orphans."""
        path = os.path.join(self.workers_dir, check_worker_id(worker_id) + ".lock")
        with storage_errors("unregister_worker"):
            self.locks.release(path, unlink=True)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` soon after any process adds a waiting job or asks a cancel.

        A watcher thread stats the ready directories and ``cancels/`` every
        ``watch_interval`` seconds; see :mod:`backrun.storage.jsonfile.watch`.
        """
        return self._watcher.subscribe(callback)

    def close(self) -> None:
        """Stop the watcher and release every lock this store holds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._watcher.stop()
        self.flusher.close()
        self.locks.release(self.session_path, unlink=not self.stranded)
        self.locks.release_all()


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
