"""Adding new jobs: one link, or one committed batch (all or none)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backrun.jobs import Job, check_job_id
from backrun.serialization import dump_job
from backrun.storage import fs
from backrun.storage.base import READY_STATES

from .core import storage_errors
from .layout import finished_name, parse_ready
from .ticks import has_marker, mark, tick_lock
from .window import Written

if TYPE_CHECKING:
    from .batch import Batches
    from .core import StoreContext
    from .queries import Reads


__all__ = ["Enqueue"]

logger = logging.getLogger("backrun.storage.jsonfile")


class Enqueue:
    """``add``, ``add_many`` and ``add_once`` of the JSON store."""

    def __init__(self, ctx: StoreContext, *, batches: Batches, reads: Reads) -> None:
        self.ctx = ctx
        self.batches = batches
        self.reads = reads

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
            plans.append((job, *self.ctx.waiting_path(job, job.created_at)))
        with storage_errors("enqueue"):
            for qenc in {qenc for _, qenc, _, _ in plans}:
                self.ctx.ensure_queue(qenc)
                if len(plans) > 1:  # one job is linked, which refuses a duplicate by itself
                    with self.ctx.mutex:
                        self.ctx.cache(qenc).refresh(0, force=True)
            for job, *_ in plans:
                if self._exists(job.id):
                    raise ValueError(f"job {job.id} exists already")
            self._write_new(plans)

    def add_once(self, job: Job) -> bool:
        """Add a job at most once per id, under its creation lock; see :meth:`Storage.add_once`."""
        check_job_id(job.id)
        if job.state not in READY_STATES or job.run_at is None:
            raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        with storage_errors("enqueue"), tick_lock(self.ctx.root, job.id):
            if has_marker(self.ctx.root, job.id):
                return False
            added = False
            if self.reads.locate(job.id) is None:  # a creator killed before its marker
                try:
                    self.add(job)
                    added = True
                except ValueError:
                    pass
            mark(self.ctx.root, job.id, sync=self.ctx.fsync)
            return added

    def _exists(self, job_id: str) -> bool:
        if job_id in self.ctx.mine:
            return True
        with self.ctx.mutex:
            for cache in self.ctx.caches.values():
                if cache.holds(job_id):
                    return True
        name = finished_name(job_id)
        for qenc in self.ctx.made:
            for directory in self.ctx.finished_dirs(qenc):
                try:
                    fs.lstat(directory + name)
                    return True
                except FileNotFoundError:
                    pass
        return False

    def _write_new(self, plans: list[tuple[Job, str, str, str]]) -> None:
        if len(plans) > 1:
            records = [dump_job(job) for job, *_ in plans]
            self.batches.write_batch(
                records, [(directory, name) for _, _, directory, name in plans]
            )
            written: Written | None = None
        else:
            written = self._write_one(plans[0])
        with self.ctx.mutex:
            for _, qenc, directory, name in plans:
                if directory.endswith("ready"):
                    parsed = parse_ready(name)
                    assert parsed is not None
                    self.ctx.cache(qenc).add(parsed, written)

    def _write_one(self, plan: tuple[Job, str, str, str]) -> Written:
        """One job: written aside, then linked into place (one step, so all or none).

        A link, not a rename: it refuses an existing name, and on ext4 a link
        plus an unlink costs less than a rename between directories (measured).
        Returns what was written, so a claim by this store needs no read.
        """
        job, _, directory, name = plan
        data = dump_job(job)
        tmp, st = self.ctx.files.write_tmp_stat(data)
        try:
            dest = os.path.join(directory, name)
            try:
                fs.link(tmp, dest)
            except FileExistsError:
                raise ValueError(f"job {job.id} exists already") from None
            except FileNotFoundError:
                self.ctx.ensure_dir(directory)
                fs.link(tmp, dest)
            try:
                self.ctx.files.sync_dir(directory)
            except Exception:
                self.ctx.files.discard(dest)
                raise
        finally:
            self.ctx.files.discard(tmp)
        # A compact copy: orjson's bytes keep the whole buffer they were
        # encoded into (4-8 KB), ten times a small record's length.
        return Written(bytes(memoryview(data)), st.st_ino, st.st_mtime_ns, st.st_size)
