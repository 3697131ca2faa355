"""Changes to jobs nobody owns in the PostgreSQL store: enqueue, cancel, requeue, pause, purge.

``add`` commits synchronously (a job survives a database crash once the call
returns) and ``NOTIFY``s the queue, in the same statement. Through a caller's
connection it commits or rolls back with the caller's transaction, and the
notification goes out only on commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import psycopg

from backrun.errors import JobNotFound, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id
from backrun.storage.base import READY_STATES

from .options import Options
from .pool import RETRY, Connections
from .rows import insert_params, row_to_job
from .schema import AdvisoryLock
from .statements import Statements

__all__ = ["Changes", "check_new_jobs", "sqlstate"]


class Changes:
    """Writes that need no claim: adding jobs and the operators' commands."""

    def __init__(self, db: Connections, sql: Statements, options: Options) -> None:
        self._db = db
        self._sql = sql
        self._options = options

    def add_many(self, jobs: Sequence[Job], *, connection: Any = None) -> None:
        """Insert new jobs in one statement, all or none, and notify their queues."""
        check_new_jobs(jobs)
        if not jobs:
            return
        sql = self._sql
        params = insert_params(jobs, sql.channel)
        if connection is not None:
            try:
                with connection.cursor() as cur:
                    cur.execute(sql.insert, params)
            except Exception as exc:
                if sqlstate(exc) == "23505":
                    raise ValueError("a job with one of these ids exists already") from exc
                raise
            return
        ids = [job.id for job in jobs]

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(sql.count_ids, (ids,)).fetchone()
            return None if row and row[0] == len(ids) else RETRY

        try:
            self._db.uncertain(lambda conn: conn.execute(sql.insert, params), landed)
        except StorageError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise ValueError("a job with one of these ids exists already") from None
            raise

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a waiting job, or ask a running one to stop (announced to every process)."""
        check_job_id(job_id)
        sql = self._sql.cancel
        params = {"id": job_id, "now": now, "channel": self._sql.channel}
        # Cancelling twice ends where cancelling once does, so a dropped call is retried.
        row = self._db.retrying(lambda conn: conn.execute(sql, params).fetchone())
        if row is None:
            raise JobNotFound(job_id)
        return row_to_job(row)

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a DEAD, CANCELLED or SCHEDULED job again now."""
        check_job_id(job_id)
        sql = self._sql
        params = {"id": job_id, "now": now, "channel": sql.channel}

        def requeue(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(sql.requeue, params).fetchone()
            if row is not None:
                return row
            found = conn.execute(sql.state_of, (job_id,)).fetchone()
            if found is None:
                raise JobNotFound(job_id)
            raise ValueError(f"job {job_id} is {found[0]}; it cannot be retried")

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(sql.get, (job_id,)).fetchone()
            job = None if row is None else row_to_job(row)
            done = job is not None and job.state is JobState.QUEUED and job.run_at == now
            return row if done else RETRY

        return row_to_job(self._db.uncertain(requeue, landed))

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Insert the queue's pause row; False if it was paused already."""
        sql = self._sql.pause
        # Pausing twice ends where pausing once does, so a dropped call is retried.
        count: int = self._db.retrying(lambda conn: conn.execute(sql, (queue, now)).rowcount)
        return count > 0

    def resume_queue(self, queue: str) -> bool:
        """Delete the pause row and wake idle workers; False if it was not paused."""
        sql, channel = self._sql.resume, self._sql.channel
        rows: list[Any] = self._db.retrying(
            lambda conn: conn.execute(sql, (queue, channel)).fetchall()
        )
        return bool(rows)

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete old finished jobs in batches, each its own short transaction."""
        wanted = [JobState(s).value for s in set(states) & FINISHED_STATES]
        if not wanted:
            return 0
        total = 0
        while True:
            batch = self._options.purge_batch
            with self._db.connect() as conn:
                cur = conn.execute(self._sql.purge_batch, (wanted, before, batch))
                deleted = cur.rowcount
            total += deleted
            if deleted < batch:
                return total

    def compact_counts(self) -> None:
        """Fold the finished-count deltas into one row per (queue, state); one caller at a time."""
        sql = self._sql.compact_counts

        def compact(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                lock = int(AdvisoryLock.COMPACT_COUNTS)
                row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock,)).fetchone()
                if row and row[0]:
                    conn.execute(sql)

        self._db.retrying(compact)


def check_new_jobs(jobs: Sequence[Job]) -> None:
    """Raise ValueError unless ``jobs`` are new, waiting, with distinct valid ids."""
    for job in jobs:
        check_job_id(job.id)
        if job.state not in READY_STATES or job.run_at is None:
            raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
    if len({job.id for job in jobs}) != len(jobs):
        raise ValueError("duplicate job ids in batch")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg 3, psycopg2 or Django-wrapped database error."""
    for candidate in (exc, exc.__cause__):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None
