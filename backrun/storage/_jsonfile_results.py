"""The JSON store's follow-ups (``then=``) and progress writes."""

from __future__ import annotations

import os

import orjson

from backrun.clock import utcnow
from backrun.errors import LeaseLost
from backrun.followups import followup_jobs
from backrun.jobs import Job, Progress, check_job_id
from backrun.serialization import progress_to_dict

from . import fs
from ._jsonfile_base import storage_errors
from ._jsonfile_layout import check_token
from ._jsonfile_progress import progress_dir, progress_path
from ._jsonfile_queries import QueryMixin

__all__ = ["ResultsMixin"]


class ResultsMixin(QueryMixin):
    """Follow-ups created before a success is published; progress files per claim."""

    def add(self, job: Job) -> None:
        raise NotImplementedError  # the store's own add

    def add_followups(self, parent: Job) -> None:
        """Create ``parent``'s follow-ups that do not exist yet (called while it is grabbed).

        Each is written durably before the parent's success is published. A
        crash in between leaves the parent RUNNING (its grab is healed back),
        so it runs again, and its next success finds these ids taken: a
        follow-up exists once, never zero times beside a visible success.
        """
        for child in followup_jobs(parent, parent.finished_at or utcnow()):
            if self.locate(child.id) is not None:
                continue
            try:
                self.add(child)
            except ValueError:
                if self.locate(child.id) is None:
                    raise

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress in its claim's file; see the base class."""
        check_job_id(job.id)
        token = check_token(job.claim_token)
        if token is None or self.running_name_of(job.id, token) is None:
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
        with storage_errors("progress"):
            tmp = self.files.write_tmp(orjson.dumps(progress_to_dict(progress)), sync=False)
            dest = progress_path(self.root, job.id, token)
            try:
                try:
                    fs.rename(tmp, dest)
                except FileNotFoundError:
                    self.ensure_dir(progress_dir(self.root))
                    fs.rename(tmp, dest)
            except Exception:
                self.files.discard(tmp)
                raise

    def forget_progress(self, job_id: str, token: str) -> None:
        """Remove a finished claim's progress file, if any (best effort)."""
        self.files.discard(progress_path(self.root, job_id, token))

    def clean_progress(self, claims: set[tuple[str, str]]) -> None:
        """Remove the progress files of claims that are no longer running."""
        directory = progress_dir(self.root)
        try:
            names = fs.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if tuple(name.removesuffix(".json").split("~", 1)) not in claims:
                self.files.discard(os.path.join(directory, name))
