"""Claims in the PostgreSQL store: one ``UPDATE ... FROM (SELECT ... SKIP LOCKED)`` round trip.

A claim stamps its jobs' tokens with a per-call prefix, so a claim whose
reply was lost still hands over what it took (:meth:`Claims.claim` asks for
the prefix on a fresh connection). Claims commit with ``synchronous_commit =
off`` unless ``synchronous_claims``: a PostgreSQL crash may forget a claim of
the last fraction of a second, and the job runs again (at-least-once).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import psycopg

from backrun.jobs import Job

from .options import Options
from .pool import Connections
from .rows import row_to_job
from .statements import Statements

__all__ = ["Claims"]


class Claims:
    """Takes due jobs for a worker (the unlimited path; see ``limits`` for the other)."""

    def __init__(self, db: Connections, sql: Statements, options: Options) -> None:
        self._db = db
        self._sql = sql
        self._options = options

    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs, highest priority first."""
        if limit <= 0 or (queues is not None and not queues):
            return []
        sql = self._sql
        params: dict[str, Any] = {
            "now": now,
            "limit": limit,
            "worker": worker_id,
            "until": now + lease,
        }
        query = sql.claim_head
        if queues is not None:
            query += " AND queue = ANY(%(queues)s)"
            params["queues"] = list(queues)
        query += sql.claim_tail if self._options.synchronous_claims else sql.claim_tail_async
        params["batch"] = batch = secrets.token_hex(8)

        def claim(conn: psycopg.Connection[Any]) -> Any:
            # One autocommit statement: its own transaction, one round trip.
            return conn.execute(query, params).fetchall()

        def landed(conn: psycopg.Connection[Any]) -> Any:
            # The claim's reply was lost: whatever it took carries this batch's token prefix.
            return conn.execute(sql.claimed_in_batch, (worker_id, batch)).fetchall()

        rows = self._db.uncertain(claim, landed)
        jobs = [row_to_job(row) for row in rows]
        jobs.sort(key=lambda job: (-job.priority, job.run_at, job.id))
        return jobs
