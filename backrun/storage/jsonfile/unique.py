"""Unique jobs in the JSON file store: key records under striped cross-process locks.

Layout, under the store's root::

    unique/locks/<2 hex digits>.lock   256 flock stripes, by the key's digest
    unique/keys/<digest>.json          {"job": id, "until": ns or null}

``<digest>`` is a SHA-256 of the handler and the key, so no user-supplied text
ever reaches a path. An enqueue with keys takes the stripes of its keys (in
sorted order, so two batches cannot deadlock), and holding them reads each
key record, asks the store for the job it names and decides: the key is taken
while that job waits or runs or before ``until``; otherwise it is free. The
new key records are written (atomic rename) before the new jobs are added, all
while the stripes are held, so exactly one of any number of racing callers,
threads or processes, stores a job for a key, and the others read its record.

A creator killed at any step leaves a record naming a job that does not
exist (the key is free again) or a job with its record (the key is taken):
``flock`` is released by the kernel when its holder dies, so nothing waits on
a dead creator. Key records of free keys are deleted by ``maintain()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from backrun.jobs import Job, check_job_id
from backrun.limits import group_hash, holds_key
from backrun.storage import fs
from backrun.storage.base import READY_STATES

from .core import from_ns, storage_errors, to_ns
from .layout import key_lock_name

if TYPE_CHECKING:
    from .core import StoreContext
    from .enqueue import Enqueue
    from .queries import Reads
    from .upkeep import Upkeep


__all__ = ["UniqueKeys", "exclusive"]

UNIQUE_DIR = "unique"


def _ensure(directory: str) -> str:
    with contextlib.suppress(FileExistsError):
        fs.mkdir(os.path.dirname(directory))
    with contextlib.suppress(FileExistsError):
        fs.mkdir(directory)
    return directory


@contextlib.contextmanager
def exclusive(paths: Sequence[str]) -> Iterator[None]:
    """Hold the ``flock`` of every lock file in ``paths`` (taken in sorted order)."""
    held: list[tuple[int, str]] = []
    try:
        for path in sorted(set(paths)):
            fd = fs.open_lock_file(path)
            held.append((fd, path))
            fs.lock_exclusive_wait(fd, path)
        yield
    finally:
        for fd, path in reversed(held):
            fs.close(fd, path)


class UniqueKeys:
    """:meth:`add_unique` for :class:`~backrun.storage.jsonfile.JsonFileStorage`."""

    def __init__(
        self, ctx: StoreContext, *, enqueue: Enqueue, reads: Reads, upkeep: Upkeep
    ) -> None:
        self.ctx = ctx
        self.enqueue = enqueue
        self.reads = reads
        self.upkeep = upkeep
        self._last_key_sweep: datetime | None = None

    def _unique_paths(self, job: Job) -> tuple[str, str]:
        assert job.unique_key is not None
        digest = group_hash("unique", job.handler, job.unique_key)
        base = os.path.join(self.ctx.root, UNIQUE_DIR)
        return (
            os.path.join(_ensure(os.path.join(base, "locks")), key_lock_name(digest)),
            os.path.join(_ensure(os.path.join(base, "keys")), digest + ".json"),
        )

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`."""
        if connection is not None:
            raise TypeError(f"{type(self).__name__} cannot join your transaction (connection=)")
        for job in jobs:
            check_job_id(job.id)
            if job.state not in READY_STATES or job.run_at is None:
                raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        with storage_errors("enqueue"):
            paths = {
                (job.handler, job.unique_key): self._unique_paths(job)
                for job in jobs
                if job.unique_key is not None
            }
            with exclusive([lock for lock, _ in paths.values()]):
                taken: dict[tuple[str, str | None], Job] = {}
                result: list[Job] = []
                for job in jobs:
                    if job.unique_key is None:
                        result.append(job)
                        continue
                    key = (job.handler, job.unique_key)
                    if key not in taken:
                        holder = self._key_holder(paths[key][1], now, job)
                        taken[key] = job if holder is None else holder
                    result.append(taken[key])
                new = [job for job, got in zip(jobs, result, strict=True) if got is job]
                for job in new:
                    if job.unique_key is not None:
                        self._write_key(paths[(job.handler, job.unique_key)][1], job)
                if new:
                    self.enqueue.add_many(new)
            return result

    def _key_holder(self, path: str, now: datetime, newcomer: Job | None) -> Job | None:
        """The job that keeps the key recorded at ``path`` from ``newcomer``; ``None``: free.

        Without a newcomer (the sweep of free keys), only the holder's own state
        and ``until`` count.
        """
        try:
            record = orjson.loads(fs.read_file(path))
            job_id = check_job_id(record["job"])
            until = record.get("until")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self.ctx.files.quarantine(path, "not a unique key record")
            return None
        if until is not None and now < from_ns(int(until)):
            return self.reads.get(job_id)
        holder = self.reads.get(job_id)
        if holder is None or not holds_key(
            holder, now, newcomer or holder.replace(unique_until=None)
        ):
            return None
        return holder

    def _write_key(self, path: str, job: Job) -> None:
        until = None if job.unique_until is None else to_ns(job.unique_until)
        tmp = self.ctx.files.write_tmp(orjson.dumps({"job": job.id, "until": until}), sync=True)
        try:
            fs.rename(tmp, path)
        except Exception:
            self.ctx.files.discard(tmp)
            raise

    def maintain(self, *, now: datetime) -> None:
        """The store's housekeeping, then (as often as purges) the records of free keys."""
        self.upkeep.maintain(now=now)
        every = min(self.ctx.retention / 10, timedelta(minutes=1))
        if self._last_key_sweep is None or abs(now - self._last_key_sweep) >= every:
            self._last_key_sweep = now
            with storage_errors("maintain"):
                self.forget_free_keys(now)

    def forget_free_keys(self, now: datetime) -> int:
        """Delete the records of keys no job holds any longer (for ``maintain``)."""
        keys = os.path.join(self.ctx.root, UNIQUE_DIR, "keys")
        locks = os.path.join(self.ctx.root, UNIQUE_DIR, "locks")
        removed = 0
        for name in self.ctx.names_in(keys):
            path = os.path.join(keys, name)
            with exclusive([os.path.join(locks, key_lock_name(name))]):
                if self._key_holder(path, now, None) is None:
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(path)
                        removed += 1
        return removed
