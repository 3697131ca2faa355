"""The PostgreSQL store's success step: an update that also inserts ``then=`` follow-ups."""

from __future__ import annotations

from typing import Any

import psycopg

from backrun.clock import utcnow
from backrun.followups import followup_jobs
from backrun.jobs import Job, JobState

from .rows import insert_params
from .statements import Statements

__all__ = ["write_update"]


def write_update(conn: psycopg.Connection[Any], sql: Statements, job: Job, params: Any) -> bool:
    """Run the owner's update; a success also inserts its follow-ups, in one transaction.

    Returns:
        False if the job is not RUNNING under this claim (nothing written).
    """
    if job.state is not JobState.SUCCEEDED or not job.followups:
        return conn.execute(sql.update, params).fetchone() is not None
    with conn.transaction():
        if conn.execute(sql.update, params).fetchone() is None:
            return False
        children = followup_jobs(job, job.finished_at or utcnow())
        conn.execute(sql.insert_missing, insert_params(children, sql.channel))
    return True
