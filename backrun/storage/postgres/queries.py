"""Reads of the PostgreSQL store: single jobs, listings, counts, due times, dashboards.

:meth:`Queries.counts` reads waiting and running rows through their partial
indexes and finished ones from ``job_counts``, deltas kept by triggers in the
same transaction as each change, so a metrics scrape costs O(waiting +
running) and stays exact however many finished rows are kept.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import psycopg

from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id

from .pool import Connections
from .rows import row_to_job
from .statements import Statements

__all__ = ["Queries"]


class Queries:
    """Every read that changes nothing (each retried once on a dropped connection)."""

    def __init__(self, db: Connections, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        check_job_id(job_id)
        sql = self._sql.get
        row = self._db.retrying(lambda conn: conn.execute(sql, (job_id,)).fetchone())
        return None if row is None else row_to_job(row)

    def find(self, *, state: JobState | None, queue: str | None, limit: int) -> list[Job]:
        """Matching jobs, oldest id first."""
        where, params = _filters(state=state, queue=queue)
        query = self._sql.find + where + " ORDER BY id LIMIT %s"
        params.append(limit)
        rows = self._db.retrying(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_job(row) for row in rows]

    def find_page(
        self,
        *,
        state: JobState | None,
        queue: str | None,
        handler: str | None,
        offset: int,
        limit: int,
    ) -> list[Job]:
        """Matching jobs, newest id first, by the primary key."""
        where, params = _filters(state=state, queue=queue, handler=handler)
        query = self._sql.find + where + " ORDER BY id DESC OFFSET %s LIMIT %s"
        params += [offset, limit]
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_job(row) for row in rows]

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Jobs per (queue, state), exactly, in O(waiting + running)."""
        sql = self._sql.counts

        def count(conn: psycopg.Connection[Any]) -> Any:
            with conn.transaction():
                # Stale statistics must not turn the partial-index counts into a
                # full scan; and the cost that setting adds must not trigger JIT
                # compilation (seconds per call).
                conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
                return conn.execute(sql).fetchall()

        rows = self._db.retrying(count)
        return {(queue, JobState(state)): int(n) for queue, state, n in rows}

    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Finishes per state and time bucket, counted in SQL."""
        params = {
            "since": since,
            "until": until,
            "width": (until - since).total_seconds() / buckets,
            "last": buckets - 1,
        }
        sql = self._sql.finish_counts
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql, params).fetchall())
        counts = {s: [0] * buckets for s in FINISHED_STATES}
        for state, bucket, n in rows:
            counts[JobState(state)][bucket] += n
        return counts

    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job in an unpaused queue."""
        query, params = self._sql.next_run_at, []
        if queues is not None:
            query += " AND queue = ANY(%s)"
            params.append(list(queues))
        row = self._db.retrying(lambda conn: conn.execute(query, params).fetchone())
        value: datetime | None = row[0]
        return None if value is None else value.astimezone(UTC)

    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue."""
        sql = self._sql.oldest_due
        rows = self._db.retrying(lambda conn: conn.execute(sql, (now,)).fetchall())
        return {queue: run_at.astimezone(UTC) for queue, run_at in rows}

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """The ids among ``job_ids`` RUNNING with a cancel requested (one indexed query)."""
        ids = list(job_ids)
        if not ids:
            return set()
        for job_id in ids:
            check_job_id(job_id)
        sql = self._sql.cancel_requests
        rows = self._db.retrying(lambda conn: conn.execute(sql, (ids,)).fetchall())
        return {row[0] for row in rows}

    def paused_queues(self) -> frozenset[str]:
        """The paused queues."""
        sql = self._sql.paused
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql).fetchall())
        return frozenset(row[0] for row in rows)


def _filters(**columns: Any) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (or "") and its parameters for the columns given a value."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in columns.items():
        if value is None:
            continue
        where.append(f"{column} = %s")
        params.append(JobState(value).value if column == "state" else value)
    return (" WHERE " + " AND ".join(where) if where else ""), params
