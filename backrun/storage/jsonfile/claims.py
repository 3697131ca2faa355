"""Claims: one rename from ``ready/`` into ``running/`` per job."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from backrun.jobs import Job
from backrun.serialization import load_job
from backrun.storage import fs

from .core import Claimed, storage_errors, to_ns
from .layout import (
    check_worker_id,
    parse_ready,
    parse_running,
    random_hex,
    running_name,
    to_key,
)

if TYPE_CHECKING:
    from .changes import Changes
    from .core import StoreContext
    from .ops import Ops
    from .queries import Reads
    from .window import Listing, Written


__all__ = ["Claims"]

logger = logging.getLogger("backrun.storage.jsonfile")


class Claims:
    """``claim`` of the JSON store, and the finishing of a won claim."""

    def __init__(self, ctx: StoreContext, *, changes: Changes, ops: Ops, reads: Reads) -> None:
        self.ctx = ctx
        self.changes = changes
        self.ops = ops
        self.reads = reads

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
            # While claims keep coming back full, trust recent checks of q/ and later/.
            busy = self.ctx.claims_full
            qencs = self.ops.claimable(self.reads.queues_for(queues, fresh=not busy))
            self.refresh(qencs, now_key, fresh=not busy)
            refills = 0
            while len(claimed) < limit:
                with self.ctx.mutex:
                    best: tuple[str, str] | None = None
                    for qenc in qencs:
                        name = self.ctx.cache(qenc).best_due(now_key)
                        if name is not None and (best is None or name < best[1]):
                            best = (qenc, name)
                    if best is None:
                        # A window spent mid-batch: refill it from the directory.
                        spent = [q for q in qencs if self.ctx.cache(q).spent(now_key)]
                        if not spent or refills >= limit:
                            break
                        refills += 1
                        for qenc in spent:
                            self.ctx.cache(qenc).refresh(now_key)
                        continue
                    qenc, name = best
                    cache = self.ctx.cache(qenc)
                    written = cache.take_record(name)
                    cache.discard(name)  # taken out under the lock: no other thread tries it
                parsed = parse_ready(name)
                assert parsed is not None
                rname = running_name(parsed.job_id, random_hex(16), now, worker_id)
                path = os.path.join(self.ctx.running_dir, rname)
                try:
                    fs.rename(os.path.join(cache.path, name), path)
                except FileNotFoundError:
                    continue  # another process took it
                except OSError:
                    with self.ctx.mutex:
                        cache.add(parsed)
                    raise
                with self.ctx.claims_lock:
                    self.ctx.mine[parsed.job_id] = rname
                job = self.claimed(path, rname, lease_ns, os.path.join(cache.path, name), written)
                if job is not None:
                    claimed.append(job)
        self.ctx.claims_full = len(claimed) >= limit
        return claimed

    def refresh(self, qencs: list[str], now_key: int, *, fresh: bool) -> None:
        """Promote begun buckets and refresh the windows of ``qencs`` before a claim.

        A re-list a window can do without (it still holds due jobs) runs
        without the store's mutex, so other threads' claims and completions do not
        wait for it.
        """
        listings: list[Listing] = []
        with self.ctx.mutex:
            for qenc in qencs:
                self.ctx.promote(qenc, now_key, fresh=fresh)
                listing = self.ctx.cache(qenc).refresh(
                    now_key, watched=self.ctx.watched(), defer=True
                )
                if listing is not None:
                    listings.append(listing)
        if not listings:
            return
        try:
            for listing in listings:
                listing.run()
        finally:
            with self.ctx.mutex:
                for listing in listings:
                    listing.cache.install(listing)

    def claimed(
        self, path: str, rname: str, lease_ns: int, ready: str, written: Written | None = None
    ) -> Job | None:
        """Finish a won claim without raising: an error here must not strand the job.

        ``written``: the record this store wrote to the ready file, if it
        knows it; it is used (no read) when the claimed file is that very
        file (same inode, mtime and size; checked before the lease changes
        the mtime). A live worker's jobs are never orphans, so a claim that
        failed after its rename would keep the job RUNNING until the worker
        stopped: on a read error the job is renamed back to its ready name
        instead.
        """
        rn = parse_running(rname)
        assert rn is not None
        known: tuple[Job, int] | None = None
        if written is not None:
            try:
                st = fs.lstat(path)
            except OSError:
                pass  # read below, with the usual handling of what it finds
            else:
                if written.same_file(st.st_ino, st.st_mtime_ns, st.st_size):
                    known = (load_job(written.data), st.st_ino)  # exactly what a read gives
        try:
            fs.utime(path, lease_ns)
        except OSError as exc:
            logger.warning("job %s: could not stamp its lease: %s", rn.job_id, exc)
        try:
            if known is None:
                known = self.reads.read_claimed(rn, path)  # unreadable: quarantined
            if known is None:
                job = None
            else:
                record, ino = known
                job = self.ctx.running_job(record, rn, path, lease_ns=lease_ns)
                if job is not None:
                    with self.ctx.claims_lock:
                        self.ctx.claimed[rn.job_id] = Claimed(rname, record, ino)
            if job is not None and job.cancel_requested:  # carried over: heartbeats see it
                self.changes.request_cancel(path, job.id, rn.token)
            return job
        except OSError as exc:
            logger.error(
                "job %s: claim failed after taking it (%s); putting it back", rn.job_id, exc
            )
        self.ctx.forget_claim(rn.job_id, rn.token)
        try:
            fs.rename(path, ready)
        except OSError as exc:
            logger.error("job %s stays RUNNING until this worker stops: %s", rn.job_id, exc)
        return None
