"""The JSON store's changes to jobs nobody owns: cancel and requeue (grab, then publish)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

from backrun.clock import utcnow
from backrun.errors import JobNotFound, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.serialization import dump_job
from backrun.storage import fs
from backrun.storage.base import READY_STATES

from .core import Found, storage_errors, to_ns
from .layout import Place, claim_name, parse_claim, parse_ready, parse_running, token_of

if TYPE_CHECKING:
    from .core import StoreContext
    from .queries import Reads
    from .upkeep import Upkeep


__all__ = ["Changes"]

logger = logging.getLogger("backrun.storage.jsonfile")


class Changes:
    """Cancel and requeue, and the finishing touches every published change gets."""

    def __init__(self, ctx: StoreContext, *, reads: Reads, upkeep: Upkeep) -> None:
        self.ctx = ctx
        self.reads = reads
        self.upkeep = upkeep

    def replace_grabbed(self, tmp: str, dest: str, grabbed: str, job: Job) -> None:
        """Move the new record ``tmp`` into place at ``dest`` and drop the grabbed old one.

        If the new record cannot be placed, the grab is undone: the old record
        returns to where it was, and the change never happened.
        """
        try:
            self.ctx.publish(tmp, *os.path.split(dest))
        except Exception:
            self.ctx.files.discard(tmp)
            self.ctx.ungrab(grabbed)
            raise
        self._after_publish(job, dest)
        self.ctx.drop_grab(grabbed)

    def _after_publish(self, job: Job, dest: str) -> None:
        """Finishing touches once a change is visible: they must not undo or fail it."""
        directory, name = os.path.split(dest)
        if job.state not in READY_STATES:
            return
        if os.path.basename(directory) == "ready":
            parsed = parse_ready(name)
            assert parsed is not None
            with self.ctx.mutex:
                self.ctx.cache(os.path.basename(os.path.dirname(directory))).add(parsed)
        try:
            self.ctx.files.sync_dir(directory)
        except OSError as exc:
            logger.warning("job %s is saved, but syncing its directory failed: %s", job.id, exc)

    # -- changes by anyone: cancel, requeue ------------------------------------

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        check_job_id(job_id)
        with storage_errors("cancel"):
            for _ in range(1000):
                found = self.reads.locate(job_id)
                if found is None:
                    raise JobNotFound(job_id)
                job = found.job
                if found.kind in (Place.READY, Place.LATER):
                    new = job.replace(state=JobState.CANCELLED, finished_at=now)
                    if self._replace_waiting(found, new):
                        return new
                elif found.kind is Place.RUNNING:
                    assert found.running is not None
                    if self.request_cancel(found.path, job_id, found.running.token):
                        return job.replace(cancel_requested=True)
                elif found.kind is Place.FINISHED:
                    return job
                self._wait_for_change(found)
        raise StorageError(f"job {job_id} kept changing; cancel gave up")

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Return the ids among ``job_ids`` that are RUNNING with a cancel requested.

        Reads names only: one listing of ``cancels/`` (a marker
        ``<id>~<token>`` per requested claim), matched against the claims this
        store made, and one listing of ``running/`` for any other job. No
        record is read and no lease touched. See :meth:`Storage.cancel_requests`.

        Raises:
            StorageError: a directory could not be listed.
        """
        with storage_errors("cancel_requests"):
            markers = set(fs.listdir(self.ctx.cancels_dir))
            marked = {c[0] for c in map(parse_claim, markers) if c is not None} & set(job_ids)
            if not marked:
                return set()
            claims: dict[str, set[str]] = {}
            with self.ctx.claims_lock:
                for job_id in marked:
                    name = self.ctx.mine.get(job_id)
                    if name is not None:
                        claims[job_id] = {token_of(name) or ""}
            others = marked - claims.keys()
            if others:
                for entry in self.ctx.running_entries():
                    rn = parse_running(entry)
                    if rn is not None and rn.job_id in others:
                        claims.setdefault(rn.job_id, set()).add(rn.token)
            return {
                job_id
                for job_id, tokens in claims.items()
                if any(claim_name(job_id, token) in markers for token in tokens)
            }

    def request_cancel(self, path: str, job_id: str, token: str) -> bool:
        """Mark a running claim cancelled; False if its running file ``path`` is gone."""
        marker = self.ctx.marker_path(job_id, token)
        with contextlib.suppress(FileExistsError):
            fs.close(fs.open_new(marker), marker)
        try:
            fs.lstat(path)
        except FileNotFoundError:
            self.ctx.files.discard(marker)
            return False
        return True

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        check_job_id(job_id)
        with storage_errors("requeue"):
            for _ in range(1000):
                found = self.reads.locate(job_id)
                if found is None:
                    raise JobNotFound(job_id)
                job = found.job
                if (
                    job.state in (JobState.DEAD, JobState.CANCELLED)
                    and found.kind is Place.FINISHED
                ):
                    new = job.replace(
                        state=JobState.QUEUED,
                        attempts=0,
                        run_at=now,
                        finished_at=None,
                        cancel_requested=False,
                    )
                elif job.state is JobState.SCHEDULED and found.kind in (Place.READY, Place.LATER):
                    new = job.replace(state=JobState.QUEUED, run_at=now)
                elif found.kind is not Place.GRABBED:
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
            qenc, dest = self.ctx.finished_path(new)
            mtime: int | None = to_ns(new.finished_at or utcnow())
        else:
            qenc, directory, name = self.ctx.waiting_path(new, new.run_at)
            dest, mtime = os.path.join(directory, name), None
        self.ctx.ensure_queue(qenc)
        tmp = self.ctx.files.write_tmp(
            dump_job(new), sync=new.state not in FINISHED_STATES, mtime_ns=mtime
        )
        try:
            grabbed = self.ctx.grab(found.path)
        except FileNotFoundError:
            self.ctx.files.discard(tmp)
            with self.ctx.mutex:
                self.ctx.cache(found.qenc).refresh(0, force=True)
            return False
        except Exception:
            self.ctx.files.discard(tmp)
            raise
        with self.ctx.mutex:
            self.ctx.cache(found.qenc).discard(os.path.basename(found.path))
        self.replace_grabbed(tmp, dest, grabbed, new)
        return True

    def _wait_for_change(self, found: Found) -> None:
        """Another change holds the job: heal it if its session is gone, else wait a moment."""
        if found.kind is Place.GRABBED:
            self.upkeep.heal_dead_sessions()
        time.sleep(0.001)
