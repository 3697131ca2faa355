"""The PostgreSQL store's success step with ``then=`` follow-ups, and progress writes."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from backrun.clock import utcnow
from backrun.errors import LeaseLost
from backrun.followups import followup_jobs
from backrun.jobs import Job, JobState, Progress, check_job_id
from backrun.serialization import progress_to_dict

from ._postgres_pool import Connections
from ._postgres_sql import Statements, insert_params

__all__ = ["PostgresResultsMixin"]


class PostgresResultsMixin:
    """Owner writes beyond the plain update, for :class:`PostgresStorage`."""

    _db: Connections
    _sql: Statements

    def _write_update(self, conn: psycopg.Connection[Any], job: Job, params: Any) -> bool:
        """Run the owner's update; a success also inserts its follow-ups, in one transaction.

        Returns:
            False if the job is not RUNNING under this claim (nothing written).
        """
        if job.state is not JobState.SUCCEEDED or not job.followups:
            return conn.execute(self._sql.update, params).fetchone() is not None
        with conn.transaction():
            if conn.execute(self._sql.update, params).fetchone() is None:
                return False
            children = followup_jobs(job, job.finished_at or utcnow())
            conn.execute(self._sql.insert_missing, insert_params(children, self._sql.channel))
        return True

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress, as its owner; see the base class."""
        check_job_id(job.id)
        params = (orjson.dumps(progress_to_dict(progress)).decode(), job.id, job.claim_token)
        rows = self._db.retrying(
            lambda conn: conn.execute(self._sql.record_progress, params).rowcount
        )
        if not rows:
            raise LeaseLost(f"job {job.id} is no longer held under this claim")
