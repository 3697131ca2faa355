"""The JSON flat-file store: one file per job, a directory per state, atomic renames.

The layout is described in :mod:`backrun.storage._jsonfile_layout`, the
grab/publish/heal moves in :mod:`backrun.storage._jsonfile_base`. In short:

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
requeues) are fsynced; completions are not, so after a power failure a
completed job may run again (at-least-once), never be lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta

from backrun.clock import utcnow
from backrun.errors import JobNotFound, LeaseLost, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import dump_job

from . import fs
from ._jsonfile_base import Found, storage_errors, to_ns
from ._jsonfile_files import prepare_root
from ._jsonfile_layout import (
    FINISHED_DIRS,
    RunningName,
    check_token,
    check_worker_id,
    parse_ready,
    parse_running,
    running_name,
    to_key,
)
from ._jsonfile_locks import is_free
from ._jsonfile_queries import QueryMixin
from ._jsonfile_watch import Watcher
from .base import READY_STATES, Storage

__all__ = ["JsonFileStorage"]

logger = logging.getLogger("backrun.storage.jsonfile")


class JsonFileStorage(QueryMixin, Storage):
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

    Raises:
        StorageError: the directory is unsafe or cannot be created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        retention: timedelta = timedelta(days=7),
        poll_interval: float = 0.2,
        tmp_grace: timedelta = timedelta(minutes=10),
        watch_interval: float = 0.01,
    ) -> None:
        root = os.path.abspath(os.fspath(path))
        prepare_root(root)
        super().__init__(root, fsync=fsync)
        self.path = root
        self.fsync = fsync
        self.retention = retention
        self.poll_interval = poll_interval
        self.tmp_grace = tmp_grace
        self._last_purge: datetime | None = None
        self._watcher = Watcher(self, watch_interval)
        self._closed = False

    def __repr__(self) -> str:
        return f"JsonFileStorage({self.path!r}, fsync={self.fsync})"

    # -- enqueue ----------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Persist a new job; durable once this returns. See :meth:`Storage.add`."""
        self.add_many([job])

    def add_many(self, jobs: Sequence[Job]) -> None:
        """Persist several new jobs with one fsync per directory; all or none are added.

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
            for job, *_ in plans:
                if self._exists(job.id):
                    raise ValueError(f"job {job.id} exists already")
            self._write_new(plans)

    def _exists(self, job_id: str) -> bool:
        if job_id in self.mine:
            return True
        with self.mutex:
            for cache in self.caches.values():
                if job_id in cache.by_id:
                    return True
        for qenc in self.made:
            for sub in FINISHED_DIRS.values():
                try:
                    fs.lstat(os.path.join(self.qdir(qenc, sub), job_id + ".json"))
                    return True
                except FileNotFoundError:
                    pass
        return False

    def _write_new(self, plans: list[tuple[Job, str, str, str]]) -> None:
        tmps: list[str] = []
        published: list[str] = []
        try:
            for job, qenc, _, _ in plans:
                self.ensure_queue(qenc)
                tmps.append(self.files.write_tmp(dump_job(job), sync=True))
            for tmp, (job, _, directory, name) in zip(tmps, plans, strict=True):
                dest = os.path.join(directory, name)
                try:
                    fs.link(tmp, dest)
                except FileExistsError:
                    raise ValueError(f"job {job.id} exists already") from None
                except FileNotFoundError:
                    self.ensure_dir(directory)
                    fs.link(tmp, dest)
                published.append(dest)
            for directory in {directory for _, _, directory, _ in plans}:
                self.files.sync_dir(directory)
        except Exception:
            for dest in published:
                self.files.discard(dest)
            raise
        finally:
            for tmp in tmps:
                self.files.discard(tmp)
        with self.mutex:
            for _, qenc, directory, name in plans:
                if directory.endswith("ready"):
                    parsed = parse_ready(name)
                    assert parsed is not None
                    self.cache(qenc).add(parsed)

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
            qencs = self.queues_for(queues)
            with self.mutex:
                for qenc in qencs:
                    self.promote(qenc, now_key)
                    self.cache(qenc).refresh(now_key)
            while len(claimed) < limit:
                with self.mutex:
                    best: tuple[str, str] | None = None
                    for qenc in qencs:
                        name = self.cache(qenc).best_due(now_key)
                        if name is not None and (best is None or name < best[1]):
                            best = (qenc, name)
                    if best is None:
                        break
                    qenc, name = best
                    cache = self.cache(qenc)
                    cache.discard(name)
                    parsed = parse_ready(name)
                    assert parsed is not None
                    rname = running_name(parsed.job_id, secrets.token_hex(8), now, worker_id)
                    path = os.path.join(self.running_dir, rname)
                    try:
                        fs.rename(os.path.join(cache.path, name), path)
                    except FileNotFoundError:
                        continue
                    self.mine[parsed.job_id] = rname
                fs.utime(path, lease_ns)
                rn = parse_running(rname)
                assert rn is not None
                job = self.read_running(rn, path)
                if job is not None:
                    if job.cancel_requested:  # carried over: let heartbeats see it too
                        self._request_cancel(path, job.id, rn.token)
                    claimed.append(job)
        return claimed

    def update(self, job: Job) -> None:
        """Write a claimed job as the owner of its claim; see :meth:`Storage.update`."""
        check_job_id(job.id)
        token = check_token(job.claim_token)
        if token is None:
            raise LeaseLost(f"job {job.id} carries no claim of this store")
        with self.mutex:
            if job.id in self.busy:
                raise LeaseLost(f"job {job.id} is being changed by another thread")
            self.busy.add(job.id)
        try:
            with storage_errors("update"):
                self._update(job, token)
        finally:
            with self.mutex:
                self.busy.discard(job.id)

    def _update(self, job: Job, token: str) -> None:
        rname = self.running_name_of(job.id, token)
        rn = None if rname is None else parse_running(rname)
        if rn is None:
            self.mine.pop(job.id, None)
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
            self.mine.pop(job.id, None)
            raise LeaseLost(f"job {job.id} is no longer held under this claim") from None
        except Exception:
            self.files.discard(tmp)
            raise
        try:
            self.publish(tmp, *os.path.split(dest))
        except Exception:
            self.files.discard(tmp)
            self.ungrab(grabbed)
            raise
        self._after_publish(job, dest)
        self.drop_grab(grabbed)
        if job.state is not JobState.RUNNING:
            self.mine.pop(job.id, None)
            self.files.discard(self.marker_path(job.id, token))
        elif dest != src:
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

    def _after_publish(self, job: Job, dest: str) -> None:
        """Finishing touches once a change is visible: they must not undo or fail it."""
        directory, name = os.path.split(dest)
        if job.state not in READY_STATES:
            return
        if os.path.basename(directory) == "ready":
            parsed = parse_ready(name)
            assert parsed is not None
            with self.mutex:
                self.cache(os.path.basename(os.path.dirname(directory))).add(parsed)
        try:
            self.files.sync_dir(directory)
        except OSError as exc:
            logger.warning("job %s is saved, but syncing its directory failed: %s", job.id, exc)

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
                    self.mine.pop(job.id, None)
                    continue
                if self.has_marker(job.id, token):
                    stop.add(job.id)
        return stop

    # -- changes by anyone: cancel, requeue ------------------------------------

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        check_job_id(job_id)
        with storage_errors("cancel"):
            for _ in range(1000):
                found = self.locate(job_id)
                if found is None:
                    raise JobNotFound(job_id)
                job = found.job
                if found.kind in ("ready", "later"):
                    new = job.replace(state=JobState.CANCELLED, finished_at=now)
                    if self._replace_waiting(found, new):
                        return new
                elif found.kind == "running":
                    assert found.running is not None
                    if self._request_cancel(found.path, job_id, found.running.token):
                        return job.replace(cancel_requested=True)
                elif found.kind == "finished":
                    return job
                self._wait_for_change(found)
        raise StorageError(f"job {job_id} kept changing; cancel gave up")

    def _request_cancel(self, path: str, job_id: str, token: str) -> bool:
        marker = self.marker_path(job_id, token)
        with contextlib.suppress(FileExistsError):
            fs.close(fs.open_new(marker), marker)
        try:
            fs.lstat(path)
        except FileNotFoundError:
            self.files.discard(marker)
            return False
        return True

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        check_job_id(job_id)
        with storage_errors("requeue"):
            for _ in range(1000):
                found = self.locate(job_id)
                if found is None:
                    raise JobNotFound(job_id)
                job = found.job
                if job.state in (JobState.DEAD, JobState.CANCELLED) and found.kind == "finished":
                    new = job.replace(
                        state=JobState.QUEUED,
                        attempts=0,
                        run_at=now,
                        finished_at=None,
                        cancel_requested=False,
                    )
                elif job.state is JobState.SCHEDULED and found.kind in ("ready", "later"):
                    new = job.replace(state=JobState.QUEUED, run_at=now)
                elif found.kind != "grabbed":
                    raise ValueError(f"job {job_id} is {job.state.value}; it cannot be retried")
                else:
                    self._wait_for_change(found)
                    continue
                if self._replace_waiting(found, new):
                    return new
        raise StorageError(f"job {job_id} kept changing; requeue gave up")

    def _replace_waiting(self, found: Found, new: Job) -> bool:
        """Swap a job nobody owns for ``new`` by grab and publish; False if it moved first."""
        if new.state in FINISHED_STATES:
            qenc, dest = self.finished_path(new)
            mtime: int | None = to_ns(new.finished_at or utcnow())
        else:
            qenc, directory, name = self.waiting_path(new, new.run_at)
            dest, mtime = os.path.join(directory, name), None
        self.ensure_queue(qenc)
        tmp = self.files.write_tmp(
            dump_job(new), sync=new.state not in FINISHED_STATES, mtime_ns=mtime
        )
        try:
            grabbed = self.grab(found.path)
        except FileNotFoundError:
            self.files.discard(tmp)
            with self.mutex:
                self.cache(found.qenc).refresh(0, force=True)
            return False
        except Exception:
            self.files.discard(tmp)
            raise
        with self.mutex:
            self.cache(found.qenc).discard(os.path.basename(found.path))
        try:
            self.publish(tmp, *os.path.split(dest))
        except Exception:
            self.files.discard(tmp)
            self.ungrab(grabbed)
            raise
        self._after_publish(new, dest)
        self.drop_grab(grabbed)
        return True

    def _wait_for_change(self, found: Found) -> None:
        """Another change holds the job: heal it if its session is gone, else wait a moment."""
        if found.kind == "grabbed":
            self.heal_dead_sessions()
        time.sleep(0.001)

    # -- housekeeping ------------------------------------------------------------

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete finished jobs whose finished_at (file mtime) is before ``before``."""
        cutoff = to_ns(before)
        removed = 0
        with storage_errors("purge"):
            for qenc in self.queue_dirs():
                for state in set(states) & FINISHED_STATES:
                    directory = self.qdir(qenc, FINISHED_DIRS[state])
                    for name in self.names_in(directory):
                        if not name.endswith(".json"):
                            continue
                        path = os.path.join(directory, name)
                        try:
                            if fs.lstat(path).st_mtime_ns < cutoff:
                                fs.unlink(path)
                                removed += 1
                        except FileNotFoundError:
                            continue
        return removed

    def maintain(self, *, now: datetime) -> None:
        """Heal what crashes left, drop stale temporary files and markers, purge old jobs."""
        with storage_errors("maintain"):
            self.heal_dead_sessions()
            for grabbed in list(self.stranded):
                self.stranded.discard(grabbed)
                self.heal_grab(grabbed, lambda job_id: self.locate(job_id, grabs=False))
            grace = int(self.tmp_grace.total_seconds() * 1e9)
            self.files.clean_tmp(older_than_ns=time.time_ns() - grace)
            self._clean_markers_and_locks()
            every = min(self.retention / 10, timedelta(minutes=1))
            if self._last_purge is None or abs(now - self._last_purge) >= every:
                self._last_purge = now
                self.purge(before=now - self.retention)

    def heal_dead_sessions(self) -> None:
        """Finish or undo the half-done changes of every store that died."""
        directory = os.path.join(self.root, "sessions")
        for name in fs.listdir(directory):
            path = os.path.join(directory, name)
            if path == self.session_path or not name.endswith(".lock"):
                continue
            try:
                self.locks.acquire(path, wait=0)
            except TimeoutError:
                continue
            try:
                self.heal_session(name[:-5], lambda job_id: self.locate(job_id, grabs=False))
            finally:
                self.locks.release(path, unlink=True)

    def _clean_markers_and_locks(self) -> None:
        running = [parse_running(n) for n in self.running_entries()]
        claims = {(rn.job_id, rn.token) for rn in running if rn is not None}
        workers = {rn.worker_id for rn in running if rn is not None}
        for name in fs.listdir(self.cancels_dir):
            if tuple(name.split("~", 1)) not in claims:
                self.files.discard(os.path.join(self.cancels_dir, name))
        for name in fs.listdir(self.workers_dir):
            path = os.path.join(self.workers_dir, name)
            if name[:-5] not in workers and not self.locks.holds(path):
                is_free(path, remove=True)

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
        """Call ``callback`` soon after any process adds a waiting job (watcher thread)."""
        return self._watcher.subscribe(callback)

    def close(self) -> None:
        """Stop the watcher and release every lock this store holds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._watcher.stop()
        self.locks.release(self.session_path, unlink=not self.stranded)
        self.locks.release_all()
