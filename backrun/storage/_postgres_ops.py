"""SQL for operator state in the PostgreSQL store: live workers' records, paused queues.

Worker records ride on the ``workers`` row (columns ``info`` and
``info_expires_at``, migration 4), so they go with it when a worker
unregisters; a killed worker's record expires by the database's clock.
Paused queues are rows of ``paused_queues``; claims skip them in SQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from backrun.jobs import FINISHED_STATES, Job, JobState
from backrun.workerinfo import WorkerInfo

from ._postgres_pool import Connections
from ._postgres_sql import COLUMNS, FINISHED, Statements, check_schema, row_to_job

__all__ = ["OpsStatements", "PostgresOpsMixin"]


class OpsStatements:
    """The statements behind ``publish_worker``, ``live_workers`` and pausing."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        self.publish_worker = (
            f"UPDATE {q}.workers SET info = %(info)s::json, info_expires_at = now() + %(ttl)s "
            "WHERE id = %(id)s"
        )
        self.live_workers = (
            f"SELECT info::text FROM {q}.workers WHERE info IS NOT NULL "
            "AND expires_at >= now() AND info_expires_at >= now() ORDER BY id"
        )
        self.pause = (
            f"INSERT INTO {q}.paused_queues (queue, paused_at) VALUES (%s, %s) "
            "ON CONFLICT (queue) DO NOTHING"
        )
        # Resuming notifies the enqueue channel, so idle workers elsewhere look at once.
        self.resume = (
            f"WITH d AS (DELETE FROM {q}.paused_queues WHERE queue = %s RETURNING queue) "
            "SELECT pg_notify(%s, d.queue) FROM d"
        )
        self.paused = f"SELECT queue FROM {q}.paused_queues ORDER BY queue"
        self.find_page = f"SELECT {COLUMNS} FROM {q}.jobs"
        self.finish_counts = (
            "SELECT state, least(floor(extract(epoch FROM finished_at - %(since)s) "
            "/ %(width)s)::int, %(last)s) AS bucket, count(*) "
            f"FROM {q}.jobs WHERE state IN {FINISHED} "
            "AND finished_at >= %(since)s AND finished_at < %(until)s GROUP BY 1, 2"
        )


class PostgresOpsMixin:
    """Worker records and paused queues for :class:`PostgresStorage`."""

    schema: str
    _db: Connections
    _sql: Statements
    _ops: OpsStatements | None = None

    @property
    def _ops_sql(self) -> OpsStatements:
        if self._ops is None:
            self._ops = OpsStatements(self.schema)
        return self._ops

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Store the record on the worker's row; see :meth:`Storage.publish_worker`."""
        params = {"id": info.id, "info": orjson.dumps(info.to_dict()).decode(), "ttl": ttl}
        sql = self._ops_sql.publish_worker
        self._db.retrying(lambda conn: conn.execute(sql, params))

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Records of workers live by the database's clock; see :meth:`Storage.live_workers`."""
        sql = self._ops_sql.live_workers
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql).fetchall())
        found: list[WorkerInfo] = []
        for (text,) in rows:
            try:
                found.append(WorkerInfo.from_dict(orjson.loads(text)))
            except ValueError:
                continue  # written by another version; not ours to show
        return found

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Insert the queue's pause row; see :meth:`Storage.pause_queue`."""
        sql = self._ops_sql.pause
        # Pausing twice ends where pausing once does, so a dropped call is retried.
        count: int = self._db.retrying(lambda conn: conn.execute(sql, (queue, now)).rowcount)
        return count > 0

    def resume_queue(self, queue: str) -> bool:
        """Delete the pause row and wake idle workers; see :meth:`Storage.resume_queue`."""
        sql, channel = self._ops_sql.resume, self._sql.channel
        rows: list[Any] = self._db.retrying(
            lambda conn: conn.execute(sql, (queue, channel)).fetchall()
        )
        return bool(rows)

    def paused_queues(self) -> frozenset[str]:
        """The paused queues; see :meth:`Storage.paused_queues`."""
        sql = self._ops_sql.paused
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql).fetchall())
        return frozenset(row[0] for row in rows)

    def find_page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Matching jobs, newest id first, by the primary key; see :meth:`Storage.find_page`."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", None if state is None else JobState(state).value),
            ("queue", queue),
            ("handler", handler),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        query = self._ops_sql.find_page + (" WHERE " + " AND ".join(where) if where else "")
        query += " ORDER BY id DESC OFFSET %s LIMIT %s"
        params += [offset, limit]
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_job(row) for row in rows]

    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Finishes per state and bucket, counted in SQL; see :meth:`Storage.finish_counts`."""
        params = {
            "since": since,
            "until": until,
            "width": (until - since).total_seconds() / buckets,
            "last": buckets - 1,
        }
        sql = self._ops_sql.finish_counts
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql, params).fetchall())
        counts = {s: [0] * buckets for s in FINISHED_STATES}
        for state, bucket, n in rows:
            counts[JobState(state)][bucket] += n
        return counts
