"""Browsing the JSON store a page at a time, and counting recent finishes, for the dashboard.

Job ids start with their creation time, and every file name carries its
job's id, so a page newest-first is chosen from directory listings alone;
only the page's own files are read (all candidates' files when filtering by
handler, which no name carries). A finished file's mtime is its
``finished_at``, so counting recent finishes needs a ``stat`` per file and
no reads.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from backrun.jobs import FINISHED_STATES, Job, JobState
from backrun.storage import fs

from .core import to_ns, wraps_os_errors
from .layout import FINISHED_DIRS

if TYPE_CHECKING:
    from .core import StoreContext
    from .queries import Reads


__all__ = ["Pages"]


class Pages:
    """``find_page`` and ``finish_counts`` for :class:`JsonFileStorage`."""

    def __init__(self, ctx: StoreContext, *, reads: Reads) -> None:
        self.ctx = ctx
        self.reads = reads

    @wraps_os_errors("find_page")
    def find_page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Matching jobs, newest id first; see :meth:`Storage.find_page`."""
        loaded, paths = self.reads.candidates(state, queue)
        page: list[Job] = []
        skipped = 0
        for job_id in sorted(loaded.keys() | paths.keys(), reverse=True):
            if len(page) >= limit:
                break
            if handler is None and skipped < offset:
                skipped += 1  # no need to read what the page skips
                continue
            job = loaded.get(job_id)
            if job is None:
                path, states = paths[job_id]
                job = self.reads.read_checked(path, job_id, states)
            if job is None or (handler is not None and job.handler != handler):
                continue
            if skipped < offset:
                skipped += 1
                continue
            page.append(job)
        return page

    @wraps_os_errors("finish_counts")
    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Finishes per state and bucket, from mtimes; see :meth:`Storage.finish_counts`."""
        start, end = to_ns(since), to_ns(until)
        width = max((end - start) // buckets, 1)
        counts = {state: [0] * buckets for state in FINISHED_STATES}
        for qenc in self.ctx.queue_dirs():
            for done, sub in FINISHED_DIRS.items():
                directory = self.ctx.qdir(qenc, sub)
                for name in self.ctx.names_in(directory):
                    if not name.endswith(".json"):
                        continue
                    try:
                        mtime = fs.stat(os.path.join(directory, name)).st_mtime_ns
                    except FileNotFoundError:
                        continue  # purged or retried just now
                    if start <= mtime < end:
                        counts[done][min((mtime - start) // width, buckets - 1)] += 1
        return counts
