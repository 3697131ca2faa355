"""The JSON store's follow-ups (``then=``) and progress writes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson

from backrun.clock import utcnow
from backrun.errors import LeaseLost
from backrun.followups import followup_jobs
from backrun.jobs import Job, JobState, Progress, check_job_id
from backrun.serialization import progress_to_dict
from backrun.storage import fs

from .core import storage_errors
from .layout import check_token, parse_claim
from .progress import followups_dir, progress_dir, progress_path

if TYPE_CHECKING:
    from .core import StoreContext
    from .enqueue import Enqueue
    from .queries import Reads


__all__ = ["Results"]


class Results:
    """Follow-ups created before a success is published; progress files per claim."""

    def __init__(self, ctx: StoreContext, *, enqueue: Enqueue, reads: Reads) -> None:
        self.ctx = ctx
        self.enqueue = enqueue
        self.reads = reads

    def add_followups(self, parent: Job) -> None:
        """Create ``parent``'s follow-ups (called while it is grabbed, before it is published).

        The follow-ups are added all or none (one link, or one committed
        batch), after an intent file ``followups/<parent id>`` is durable. A
        crash before the success is published leaves the parent RUNNING (its
        grab is healed back), so it runs again; its next success finds the
        intent file and looks for the follow-ups before adding them, so each
        exists once, never zero times beside a visible success. Without the
        intent file no follow-up can exist yet, and nothing is looked for.
        """
        children = followup_jobs(parent, parent.finished_at or utcnow())
        if not children:
            return
        intent = os.path.join(followups_dir(self.ctx.root), parent.id)
        if _exists(intent):
            if self.reads.locate(children[0].id) is not None:
                return  # an earlier attempt's batch: all of it is there
        else:
            self._write_intent(intent)
        try:
            self.enqueue.add_many(children)
        except ValueError:
            # An id taken by a job added some other way: add the others one by one.
            for child in children:
                if self.reads.locate(child.id) is None:
                    self.enqueue.add(child)

    def _write_intent(self, intent: str) -> None:
        directory = os.path.dirname(intent)
        tmp = self.ctx.files.write_tmp(b"", sync=True)
        try:
            try:
                fs.rename(tmp, intent)
            except FileNotFoundError:
                self.ctx.ensure_dir(directory)
                fs.rename(tmp, intent)
        except Exception:
            self.ctx.files.discard(tmp)
            raise
        self.ctx.files.sync_dir(directory)

    def forget_followups(self, parent_id: str) -> None:
        """Remove a published success's intent file (best effort; ``maintain`` retries)."""
        self.ctx.files.discard(os.path.join(followups_dir(self.ctx.root), parent_id))

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress in its claim's file; see the base class."""
        check_job_id(job.id)
        token = check_token(job.claim_token)
        if token is None or self.ctx.running_name_of(job.id, token) is None:
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
        with storage_errors("progress"):
            tmp = self.ctx.files.write_tmp(orjson.dumps(progress_to_dict(progress)), sync=False)
            dest = progress_path(self.ctx.root, job.id, token)
            try:
                try:
                    fs.rename(tmp, dest)
                except FileNotFoundError:
                    self.ctx.ensure_dir(progress_dir(self.ctx.root))
                    fs.rename(tmp, dest)
            except Exception:
                self.ctx.files.discard(tmp)
                raise

    def forget_progress(self, job_id: str, token: str) -> None:
        """Remove a finished claim's progress file, if any (best effort)."""
        self.ctx.files.discard(progress_path(self.ctx.root, job_id, token))

    def clean_progress(self, claims: set[tuple[str, str]]) -> None:
        """Remove progress files of claims no longer running, and leftover intent files."""
        directory = progress_dir(self.ctx.root)
        try:
            names = fs.listdir(directory)
        except FileNotFoundError:
            names = []
        for name in names:
            if parse_claim(name) not in claims:
                self.ctx.files.discard(os.path.join(directory, name))
        self._clean_intents()

    def _clean_intents(self) -> None:
        """Remove intent files a crash left beside a published success (or a purged job)."""
        directory = followups_dir(self.ctx.root)
        try:
            names = fs.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            try:
                found = self.reads.locate(check_job_id(name))
            except ValueError:
                found = None
            if found is None or found.job.state is JobState.SUCCEEDED:
                self.ctx.files.discard(os.path.join(directory, name))


def _exists(path: str) -> bool:
    try:
        fs.lstat(path)
    except FileNotFoundError:
        return False
    return True
