"""The JSON store's read side: finding one job, listing, counting, orphans.

Reads never trust a file blindly: a record that cannot be parsed, or that
does not match the name and directory it sits in, is quarantined and skipped.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from backrun.jobs import Job, JobState, check_job_id
from backrun.storage import fs
from backrun.storage.base import READY_STATES

from . import window
from .core import Found, wraps_os_errors
from .layout import (
    BUCKET_US,
    FINISHED_DIRS,
    GRAB_SUFFIX,
    Place,
    RunningName,
    decode_queue,
    encode_queue,
    finished_name,
    from_key,
    parse_finished,
    parse_grab,
    parse_ready,
    parse_running,
    to_key,
)
from .locks import is_free

if TYPE_CHECKING:
    from .core import StoreContext
    from .ops import Ops


__all__ = ["Reads"]

_RUNNING_OR_WAITING = READY_STATES | {JobState.RUNNING}
LOCATE_PASSES = 50
"""How often :meth:`Reads.locate` looks again while the job may be moving."""


def _stable(before: dict[str, int], after: dict[str, int]) -> bool:
    """True if no directory changed between the two stamps, nor too recently to tell."""
    if before != after:
        return False
    racy_since = time.time_ns() - window.RACY_NS
    return all(mtime < racy_since for mtime in after.values())


class Reads:
    """Reads over the directory tree; see the module docstring."""

    def __init__(self, ctx: StoreContext, *, ops: Ops) -> None:
        self.ctx = ctx
        self.ops = ops

    def read_checked(self, path: str, job_id: str, states: Collection[JobState]) -> Job | None:
        """Read a job file and check it against its name; quarantine it if it does not match."""
        return self.checked(self.ctx.files.read(path), path, job_id, states)

    def checked(
        self, job: Job | None, path: str, job_id: str, states: Collection[JobState]
    ) -> Job | None:
        """The record ``job`` read from ``path``, checked as :meth:`read_checked` does."""
        if job is None:
            return None
        if (
            job.state not in states
            and job.state is not JobState.SUCCEEDED
            and states == (JobState.SUCCEEDED,)
            and job.id == job_id
        ):
            job = self.ctx.succeeded_view(job, path)  # a success by rename (see owner.py)
        if job.id != job_id or job.state not in states:
            self.ctx.files.quarantine(
                path, f"record ({job.id}, {job.state}) does not match its name"
            )
            return None
        return job

    def read_running(
        self, rn: RunningName, path: str, *, lease_ns: int | None = None
    ) -> Job | None:
        """The running job at ``path`` as claim ``rn`` holds it; None if it is gone."""
        record = self.read_checked(path, rn.job_id, _RUNNING_OR_WAITING)
        return None if record is None else self.ctx.running_job(record, rn, path, lease_ns=lease_ns)

    def read_claimed(self, rn: RunningName, path: str) -> tuple[Job, int] | None:
        """The record of a just-claimed running file and its inode; ``None`` if unreadable."""
        record, ino = self.ctx.files.read_stat(path)
        record = self.checked(record, path, rn.job_id, _RUNNING_OR_WAITING)
        return None if record is None else (record, ino)

    def queues_for(self, queues: Collection[str] | None, *, fresh: bool = True) -> list[str]:
        """The encoded names of the queue directories to look at."""
        if queues is None:
            return self.ctx.queue_dirs(fresh=fresh)
        existing = set(self.ctx.queue_dirs(fresh=fresh))
        return [q for q in (encode_queue(name) for name in queues) if q in existing]

    def locate(self, job_id: str, *, grabs: bool = True) -> Found | None:
        """Find a job wherever it is.

        A job moves by renames while it is looked for, so one pass over the
        directories can miss it: a name seen but gone when read, or a rename
        into a directory the pass had already looked at. A miss is believed only
        when no name vanished and no directory looked at changed during the
        pass (nor so recently that its coarse mtime could hide a change);
        otherwise the pass is repeated, at most :data:`LOCATE_PASSES` times.
        """
        for _ in range(LOCATE_PASSES):
            before = self._stamps()
            vanished: list[str] = []
            found = self._locate_once(job_id, grabs, vanished)
            if found is not None:
                return found
            if not vanished and _stable(before, self._stamps()):
                return None
        return None

    def _stamps(self) -> dict[str, int]:
        """The mtimes of every directory a job can be found in (missing ones as -1)."""
        stamps: dict[str, int] = {}
        for directory in (self.ctx.running_dir, self.ctx.queues_dir, *self._job_dirs()):
            try:
                stamps[directory] = fs.stat(directory).st_mtime_ns
            except FileNotFoundError:
                stamps[directory] = -1
        return stamps

    def _job_dirs(self) -> Iterator[str]:
        for qenc in self.ctx.queue_dirs():
            yield self.ctx.qdir(qenc, "ready")
            yield self.ctx.qdir(qenc, "later")
            for sub in FINISHED_DIRS.values():
                yield self.ctx.qdir(qenc, sub)
            for bucket in self.ctx.later_buckets(qenc):
                yield self.ctx.qdir(qenc, os.path.join("later", f"{bucket:012d}"))

    def _locate_once(self, job_id: str, grabs: bool, vanished: list[str]) -> Found | None:
        grabbed: tuple[RunningName, str] | None = None
        for entry in self.ctx.running_entries():
            if not entry.startswith(job_id):
                continue
            taken = parse_grab(entry)
            if taken is not None:
                rn = parse_running(taken[0])
                if grabs and rn is not None and rn.job_id == job_id:
                    grabbed = (rn, os.path.join(self.ctx.running_dir, entry))
                continue
            rn = parse_running(entry)
            if rn is None or rn.job_id != job_id:
                continue
            path = os.path.join(self.ctx.running_dir, entry)
            job = self.read_running(rn, path)
            if job is not None:
                return Found(Place.RUNNING, path, job, encode_queue(job.queue), rn)
            vanished.append(path)
        for qenc in self.ctx.queue_dirs():
            found = self._locate_in_queue(job_id, qenc, vanished)
            if found is not None:
                return found
        if grabbed is not None:
            job = self.read_running(*grabbed)
            if job is not None:
                return Found(Place.GRABBED, grabbed[1], job, encode_queue(job.queue), grabbed[0])
            vanished.append(grabbed[1])
        return None

    def _locate_in_queue(self, job_id: str, qenc: str, vanished: list[str]) -> Found | None:
        for state, sub in FINISHED_DIRS.items():
            path = os.path.join(self.ctx.qdir(qenc, sub), finished_name(job_id))
            job = self.read_checked(path, job_id, (state,))
            if job is not None:
                return Found(Place.FINISHED, path, job, qenc)
        with self.ctx.mutex:
            cache = self.ctx.cache(qenc)
            cache.refresh(0, force=True)
            name = cache.name_of(job_id)
        if name is not None:
            path = os.path.join(cache.path, name)
            job = self.read_checked(path, job_id, READY_STATES)
            if job is not None:
                return Found(Place.READY, path, job, qenc)
            vanished.append(path)
        for directory, name in self._later_names(qenc):
            later = parse_ready(name)
            if later is not None and later.job_id == job_id:
                path = os.path.join(directory, name)
                job = self.read_checked(path, job_id, READY_STATES)
                if job is not None:
                    return Found(Place.LATER, path, job, qenc)
                vanished.append(path)
        return None

    def _later_names(self, qenc: str) -> Iterator[tuple[str, str]]:
        for bucket in self.ctx.later_buckets(qenc):
            directory = self.ctx.qdir(qenc, os.path.join("later", f"{bucket:012d}"))
            try:
                names = fs.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if not name.endswith(GRAB_SUFFIX):
                    yield directory, name

    @wraps_os_errors("get")
    def get(self, job_id: str) -> Job | None:
        """Return the job, or ``None``; see :meth:`Storage.get`."""
        found = self.locate(check_job_id(job_id))
        return None if found is None else found.job

    def _running_jobs(self) -> Iterator[tuple[RunningName, Job]]:
        for entry in self.ctx.running_entries():
            rn = parse_running(entry)
            if rn is None:
                continue
            job = self.read_running(rn, os.path.join(self.ctx.running_dir, entry))
            if job is not None:
                yield rn, job

    def candidates(
        self, state: JobState | None, queue: str | None
    ) -> tuple[dict[str, Job], dict[str, tuple[str, Collection[JobState]]]]:
        """The jobs ``find`` may return: running ones read, the others as (path, states).

        Names alone pick the candidates; only running jobs (whose record the
        claim names carry anyway) are loaded here.
        """
        loaded: dict[str, Job] = {}
        paths: dict[str, tuple[str, Collection[JobState]]] = {}
        if state is None or state is JobState.RUNNING:
            for _, running in self._running_jobs():
                if queue is None or running.queue == queue:
                    loaded[running.id] = running
        for qenc in self.queues_for(None if queue is None else [queue]):
            if state is None or state in READY_STATES:
                with self.ctx.mutex:
                    cache = self.ctx.cache(qenc)
                    cache.refresh(0, force=True)
                    ready = cache.every_name()
                for parsed in ready:
                    if state is None or parsed.state is state:
                        paths[parsed.job_id] = (os.path.join(cache.path, parsed.name), READY_STATES)
                for directory, name in self._later_names(qenc):
                    later = parse_ready(name)
                    if later is not None and (state is None or later.state is state):
                        paths[later.job_id] = (os.path.join(directory, name), READY_STATES)
            for done, sub in FINISHED_DIRS.items():
                if state is None or state is done:
                    directory = self.ctx.qdir(qenc, sub)
                    for name in self.ctx.names_in(directory):
                        finished = parse_finished(name)
                        if finished is not None:
                            paths[finished] = (os.path.join(directory, name), (done,))
        return loaded, paths

    @wraps_os_errors("find")
    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return matching jobs, oldest id first; see :meth:`Storage.find`."""
        loaded, paths = self.candidates(state, queue)
        result: list[Job] = []
        for job_id in sorted(loaded.keys() | paths.keys()):
            if len(result) >= limit:
                break
            job: Job | None = loaded.get(job_id)
            if job is None:
                path, states = paths[job_id]
                job = self.read_checked(path, job_id, states)
            if job is not None:
                result.append(job)
        return result

    @wraps_os_errors("counts")
    def counts(self) -> dict[tuple[str, JobState], int]:
        """Count jobs per (queue, state) from file names; see :meth:`Storage.counts`."""
        counts: Counter[tuple[str, JobState]] = Counter()
        for qenc in self.ctx.queue_dirs():
            queue = decode_queue(qenc)
            with self.ctx.mutex:
                cache = self.ctx.cache(qenc)
                cache.refresh(0, force=True)
                for ready_state, total in cache.counts().items():
                    if total:
                        counts[(queue, ready_state)] += total
            for _, name in self._later_names(qenc):
                later = parse_ready(name)
                if later is not None:
                    counts[(queue, later.state)] += 1
            for done, sub in FINISHED_DIRS.items():
                names = self.ctx.iter_names_in(self.ctx.qdir(qenc, sub))
                total = sum(1 for n in names if n.endswith(".json"))
                if total:
                    counts[(queue, done)] += total
        for _, job in self._running_jobs():
            counts[(job.queue, JobState.RUNNING)] += 1
        return dict(counts)

    @wraps_os_errors("next_run_at")
    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job; see :meth:`Storage.next_run_at`."""
        earliest: int | None = None
        watched = self.ctx.watched()
        for qenc in self.ops.claimable(self.queues_for(queues)):
            with self.ctx.mutex:
                cache = self.ctx.cache(qenc)
                cache.refresh(0, force=not watched, watched=watched)
                key = cache.earliest()
            buckets = self.ctx.later_buckets(qenc)
            if buckets and (key is None or buckets[0] * BUCKET_US < key):
                for _, name in self._later_names_of(qenc, buckets[0]):
                    parsed = parse_ready(name)
                    if parsed is not None and (key is None or parsed.run_key < key):
                        key = parsed.run_key
            if key is not None and (earliest is None or key < earliest):
                earliest = key
        return None if earliest is None else from_key(earliest)

    def _later_names_of(self, qenc: str, bucket: int) -> Iterator[tuple[str, str]]:
        directory = self.ctx.qdir(qenc, os.path.join("later", f"{bucket:012d}"))
        try:
            names = fs.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            yield directory, name

    @wraps_os_errors("oldest_due")
    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue; see :meth:`Storage.oldest_due`."""
        now_key = to_key(now)
        oldest: dict[str, datetime] = {}
        for qenc in self.ctx.queue_dirs():
            with self.ctx.mutex:
                self.ctx.promote(qenc, now_key)
                cache = self.ctx.cache(qenc)
                cache.refresh(0, force=True)
                key = cache.earliest()
            if key is not None and key <= now_key:
                oldest[decode_queue(qenc)] = from_key(key)
        return oldest

    @wraps_os_errors("orphans")
    def orphans(self, *, now: datetime) -> list[Job]:
        """Running jobs whose worker's lock is free; see :meth:`Storage.orphans`."""
        alive: dict[str, bool] = {}
        result: list[Job] = []
        for entry in self.ctx.running_entries():
            rn = parse_running(entry)
            if rn is None:
                continue
            if rn.worker_id not in alive:
                lock = os.path.join(self.ctx.workers_dir, rn.worker_id + ".lock")
                alive[rn.worker_id] = not is_free(lock)
            if alive[rn.worker_id]:
                continue
            job = self.read_running(rn, os.path.join(self.ctx.running_dir, entry))
            if job is not None:
                result.append(job)
        return result
