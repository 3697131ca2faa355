"""Owner writes in the PostgreSQL store: how an attempt ended, and progress while it runs.

Each is guarded by the claim token: a write from a worker that lost its
claim changes nothing and raises :class:`~backrun.errors.LeaseLost`. An
update whose connection dropped mid-call is checked against the stored row
before it is retried, so nothing is applied twice.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState, Progress, check_job_id
from backrun.serialization import progress_to_dict

from .pool import RETRY, Connections
from .results import write_update
from .rows import row_to_job, update_params
from .statements import Statements

__all__ = ["OwnerWrites"]


class OwnerWrites:
    """Writes by the worker holding a job's claim."""

    def __init__(self, db: Connections, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def update(self, job: Job) -> None:
        """Write a claimed job; raise LeaseLost if this claim no longer holds it."""
        check_job_id(job.id)
        sql = self._sql
        params = update_params(job, sql.channel)
        lost = LeaseLost(f"job {job.id} is no longer held under this claim")

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(sql.get, (job.id,)).fetchone()
            stored = None if row is None else row_to_job(row)
            if stored is not None and stored.state is job.state is JobState.RUNNING:
                written = job.replace(cancel_requested=stored.cancel_requested)
            else:
                written = job
            if stored == written:
                return True
            running = stored is not None and stored.state is JobState.RUNNING
            if running and stored is not None and stored.claim_token == job.claim_token:
                return RETRY
            raise lost

        if not self._db.uncertain(lambda conn: write_update(conn, sql, job, params), landed):
            raise lost

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress; raise LeaseLost if the claim is gone."""
        check_job_id(job.id)
        sql = self._sql.record_progress
        params = (orjson.dumps(progress_to_dict(progress)).decode(), job.id, job.claim_token)
        rows = self._db.retrying(lambda conn: conn.execute(sql, params).rowcount)
        if not rows:
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
