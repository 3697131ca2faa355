"""The JSON store's housekeeping: healing what crashes left, tmp files, markers, retention."""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from backrun.jobs import FINISHED_STATES, JobState
from backrun.storage import fs

from .batch import batch_session
from .core import storage_errors, to_ns
from .layout import FINISHED_DIRS, parse_claim, parse_running
from .locks import is_free
from .ticks import forget_markers

if TYPE_CHECKING:
    from .batch import Batches
    from .core import StoreContext
    from .queries import Reads
    from .results import Results


__all__ = ["Upkeep"]


class Upkeep:
    """purge() and maintain(); see :meth:`maintain`."""

    def __init__(
        self, ctx: StoreContext, *, batches: Batches, reads: Reads, results: Results
    ) -> None:
        self.ctx = ctx
        self.batches = batches
        self.reads = reads
        self.results = results
        self._last_purge: datetime | None = None

    # -- housekeeping ------------------------------------------------------------

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete finished jobs whose finished_at (file mtime) is before ``before``."""
        cutoff = to_ns(before)
        removed = 0
        with storage_errors("purge"):
            for qenc in self.ctx.queue_dirs():
                for state in set(states) & FINISHED_STATES:
                    directory = self.ctx.qdir(qenc, FINISHED_DIRS[state])
                    for name in self.ctx.iter_names_in(directory):
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
            for grabbed in list(self.ctx.stranded):
                self.ctx.stranded.discard(grabbed)
                self.ctx.heal_grab(grabbed, lambda job_id: self.reads.locate(job_id, grabs=False))
            for batch in sorted(self.ctx.pending_batches):
                self.ctx.pending_batches.discard(batch)
                self.batches.heal_batch(batch)
            grace = int(self.ctx.tmp_grace.total_seconds() * 1e9)
            self.ctx.files.clean_tmp(older_than_ns=time.time_ns() - grace)
            self._clean_markers_and_locks()
            every = min(self.ctx.retention / 10, timedelta(minutes=1))
            if self._last_purge is None or abs(now - self._last_purge) >= every:
                self._last_purge = now
                self.purge(before=now - self.ctx.retention)
                forget_markers(self.ctx.root, before_ns=to_ns(now - self.ctx.retention))

    def heal_dead_sessions(self) -> None:
        """Finish or undo the half-done changes of every store that died."""
        directory = os.path.join(self.ctx.root, "sessions")
        batches: dict[str, list[str]] = {}
        for name in self.batches.batch_dirs():
            batches.setdefault(batch_session(name) or "", []).append(name)
        sessions = {n[:-5] for n in fs.listdir(directory) if n.endswith(".lock")} | set(batches)
        for session in sorted(sessions - {self.ctx.session}):
            path = os.path.join(directory, session + ".lock")
            try:
                self.ctx.locks.acquire(path, wait=0)
            except TimeoutError:
                continue
            try:
                # Batches first: a healed batch is a set of jobs the grabs' healing may look for.
                for name in sorted(batches.get(session, [])):
                    self.batches.heal_batch(os.path.join(self.ctx.files.tmp, name))
                self.ctx.heal_session(
                    session, lambda job_id: self.reads.locate(job_id, grabs=False)
                )
            finally:
                self.ctx.locks.release(path, unlink=True)

    def _clean_markers_and_locks(self) -> None:
        running = [parse_running(n) for n in self.ctx.running_entries()]
        claims = {(rn.job_id, rn.token) for rn in running if rn is not None}
        workers = {rn.worker_id for rn in running if rn is not None}
        for name in fs.listdir(self.ctx.cancels_dir):
            if parse_claim(name) not in claims:
                self.ctx.files.discard(os.path.join(self.ctx.cancels_dir, name))
        self.results.clean_progress(claims)
        for name in fs.listdir(self.ctx.workers_dir):
            path = os.path.join(self.ctx.workers_dir, name)
            if name[:-5] not in workers and not self.ctx.locks.holds(path):
                is_free(path, remove=True)
