"""The owner's writes: grab, publish, drop; heartbeats renew leases."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from backrun.clock import utcnow
from backrun.errors import LeaseLost
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import dump_job
from backrun.storage import fs

from .core import storage_errors, to_ns
from .layout import (
    RunningName,
    check_token,
    parse_running,
)

if TYPE_CHECKING:
    from .changes import Changes
    from .core import StoreContext
    from .limits import Limits
    from .results import Results


__all__ = ["OwnerWrites"]

logger = logging.getLogger("backrun.storage.jsonfile")


class OwnerWrites:
    """``update`` and ``heartbeat`` of the JSON store: changes by a claim's owner."""

    def __init__(
        self, ctx: StoreContext, *, changes: Changes, limits: Limits, results: Results
    ) -> None:
        self.ctx = ctx
        self.changes = changes
        self.limits = limits
        self.results = results

    def update(self, job: Job) -> None:
        """Write a claimed job as the owner of its claim; see :meth:`Storage.update`."""
        check_job_id(job.id)
        token = check_token(job.claim_token)
        if token is None:
            raise LeaseLost(f"job {job.id} carries no claim of this store")
        # Keyed by claim, not by job: the previous claim's write may still be
        # finishing (its grab not yet dropped) when this process claims the job again.
        claim = (job.id, token)
        with self.ctx.mutex:
            if claim in self.ctx.busy:
                raise LeaseLost(f"job {job.id} is being changed by another thread")
            self.ctx.busy.add(claim)
        try:
            with storage_errors("update"):
                self._update(job, token)
        finally:
            with self.ctx.mutex:
                self.ctx.busy.discard(claim)

    def _update(self, job: Job, token: str) -> None:
        rname = self.ctx.running_name_of(job.id, token)
        rn = None if rname is None else parse_running(rname)
        if rn is None:
            self.ctx.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
        src = os.path.join(self.ctx.running_dir, rn.name)
        if job.state is JobState.RUNNING and self.ctx.has_marker(job.id, token):
            job = job.replace(cancel_requested=True)
        dest, mtime = self._place(job, rn)
        tmp = self.ctx.files.write_tmp(
            dump_job(job), sync=job.state not in FINISHED_STATES, mtime_ns=mtime
        )
        try:
            grabbed = self.ctx.grab(src)
        except FileNotFoundError:
            self.ctx.files.discard(tmp)
            self.ctx.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim") from None
        except Exception:
            self.ctx.files.discard(tmp)
            raise
        if job.state is JobState.SUCCEEDED and job.followups:
            try:  # created while we hold the grab, before the success is visible
                self.results.add_followups(job)
            except Exception:
                self.ctx.files.discard(tmp)
                self.ctx.ungrab(grabbed)
                raise
        self.changes.replace_grabbed(tmp, dest, grabbed, job)
        if job.state in FINISHED_STATES and self.ctx.files.fsync:
            self.ctx.flusher.note(dest, os.path.dirname(dest), self.ctx.running_dir)
        if job.state is JobState.SUCCEEDED and job.followups:
            self.results.forget_followups(job.id)
        if job.state is not JobState.RUNNING:
            self.limits.release_slot(job, token)
            self.ctx.forget_claim(job.id, token)  # a cancel marker left behind is maintain()'s
            if job.progress is not None:
                self.results.forget_progress(job.id, token)
        elif dest != src:
            with self.ctx.mutex:
                if self.ctx.forget_claim(job.id, token) or job.id not in self.ctx.mine:
                    self.ctx.mine[job.id] = os.path.basename(dest)

    def _place(self, job: Job, rn: RunningName) -> tuple[str, int | None]:
        """Where a record in ``job.state`` goes, and the mtime its file should carry."""
        if job.state is JobState.RUNNING:
            name = self.ctx.new_running_name(job, rn)
            lease = job.lease_expires_at
            return os.path.join(self.ctx.running_dir, name), None if lease is None else to_ns(lease)
        if job.state in FINISHED_STATES:
            qenc, path = self.ctx.finished_path(job)
            self.ctx.ensure_queue(qenc)
            return path, to_ns(job.finished_at or utcnow())
        qenc, directory, name = self.ctx.waiting_path(job, job.started_at)
        self.ctx.ensure_queue(qenc)
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
                rname = None if token is None else self.ctx.running_name_of(job.id, token)
                if token is None or rname is None:
                    stop.add(job.id)
                    continue
                try:
                    fs.utime(os.path.join(self.ctx.running_dir, rname), lease_ns)
                except FileNotFoundError:
                    stop.add(job.id)
                    self.ctx.forget_claim(job.id, token)
                    continue
                if self.ctx.has_marker(job.id, token):
                    stop.add(job.id)
        return stop
