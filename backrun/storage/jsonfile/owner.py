"""The owner's writes: grab, publish, drop; heartbeats renew leases."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from backrun.clock import utcnow
from backrun.errors import LeaseLost
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import dump_job, load_job
from backrun.storage import fs

from .core import claimed_view, storage_errors, to_ns
from .layout import (
    CLAIM_XATTR,
    RunningName,
    check_token,
    claim_note,
    parse_running,
    to_key,
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
        with self.ctx.claims_lock:
            if claim in self.ctx.busy:
                raise LeaseLost(f"job {job.id} is being changed by another thread")
            self.ctx.busy.add(claim)
        try:
            with storage_errors("update"):
                self._update(job, token)
        finally:
            with self.ctx.claims_lock:
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
        if self._succeed_by_rename(job, token, rn, src):
            return
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
        else:
            with self.ctx.claims_lock:
                self.ctx.claimed.pop(job.id, None)  # the file was rewritten
                if dest != src and (
                    self.ctx.forget_claim_locked(job.id, token) or job.id not in self.ctx.mine
                ):
                    self.ctx.mine[job.id] = os.path.basename(dest)

    def _succeed_by_rename(self, job: Job, token: str, rn: RunningName, src: str) -> bool:
        """Record a plain success as one rename of the running file; False if it is not one.

        A success with no result, follow-ups, progress or cancel request whose
        job is exactly what the running file stands for needs no new record:
        the claim and the finish time go into an extended attribute of the
        running file (:data:`CLAIM_XATTR`), then ONE rename moves it into
        ``succeeded/<id>.json``; that rename is the ownership check (a stale
        owner's fails: :class:`LeaseLost`). A ``utime`` then sets its mtime
        to finished_at, for purge and the finish counts; a crash before it
        leaves the lease expiry there (readers take finished_at from the
        attribute). Readers lay SUCCEEDED over the old record
        (:meth:`StoreContext.succeeded_view`).
        """
        if not (
            job.state is JobState.SUCCEEDED
            and self.ctx.xattrs
            and job.finished_at is not None
            and job.lease_expires_at is None
            and job.claim_token == rn.token
            and job.result is None
            and not job.followups
            and job.progress is None
            and not job.cancel_requested
        ):
            return False
        record = self._record_of(job.id, rn, src)
        if record is None:
            return False
        if record.id != job.id:
            return False
        expected = claimed_view(record, rn).replace(
            state=JobState.SUCCEEDED,
            finished_at=job.finished_at,
            lease_expires_at=None,
            cancel_requested=False,
        )
        if expected != job:
            return False
        qenc, dest = self.ctx.finished_path(job)
        self.ctx.ensure_queue(qenc)
        finished_ns = to_ns(job.finished_at)
        try:
            fs.setxattr(src, CLAIM_XATTR, claim_note(rn.name, to_key(job.finished_at)))
        except FileNotFoundError:
            self.ctx.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSPC):
                if exc.errno != errno.ENOSPC:
                    self.ctx.xattrs = False  # this file system: always the full write
                return False
            raise
        try:
            fs.rename(src, dest)
        except FileNotFoundError:
            self.ctx.forget_claim(job.id, token)
            raise LeaseLost(f"job {job.id} is no longer held under this claim") from None
        try:
            fs.utime(dest, finished_ns)
        except OSError as exc:  # the attribute still says when it finished
            logger.warning("job %s: could not stamp its finish time: %s", job.id, exc)
        if self.ctx.files.fsync:
            self.ctx.flusher.note(dest, os.path.dirname(dest), self.ctx.running_dir)
        self.limits.release_slot(job, token)
        self.ctx.forget_claim(job.id, token)  # a cancel marker left behind is maintain()'s
        return True

    def _record_of(self, job_id: str, rn: RunningName, src: str) -> Job | None:
        """The record in the running file ``src``: as this store's claim found it, if the
        file is still the one it found (same inode), else read; ``None`` if unreadable.
        """
        claimed = self.ctx.claimed.get(job_id)
        if claimed is not None and claimed.name == rn.name:
            try:
                if fs.lstat(src).st_ino == claimed.ino:
                    return claimed.record
            except OSError:
                return None  # gone (the rename will tell) or unreadable: the full write decides
        try:  # never quarantined from here: the full write deals with a bad file
            return load_job(fs.read_file(src))
        except (OSError, ValueError):
            return None

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
