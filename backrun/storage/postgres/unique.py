"""Unique jobs in PostgreSQL: a key table written under an advisory lock per key.

It rests on one property of READ COMMITTED: each statement reads a fresh
snapshot. A transaction that takes a transaction-level advisory lock and
*then* reads sees everything committed by every earlier holder of that lock,
since they commit before it is released. The enqueue transaction locks each
key (a 64-bit hash of schema, handler and key; several in sorted order), reads
``unique_keys`` joined to the job it names, inserts the jobs whose keys are
free and points their keys at them, then commits. Racers wait on the lock and
then read the winner.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from backrun.errors import StorageError
from backrun.jobs import Job
from backrun.limits import holds_key

from .changes import check_new_jobs, sqlstate
from .pool import RETRY, Connections
from .rows import COLUMNS, insert_params, row_to_job
from .schema import LockKind, check_schema, group_lock
from .statements import Statements

__all__ = ["UniqueKeys"]


class UniqueStatements:
    """The statements of unique keys, bound to one schema."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        jobs = f"{q}.jobs"
        self.holders = (
            f"SELECT k.handler, k.key, {', '.join('j.' + c for c in COLUMNS.split(', '))} "
            f"FROM {q}.unique_keys AS k JOIN {jobs} AS j ON j.id = k.job_id "
            "WHERE (k.handler, k.key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        )
        self.point_keys = (
            f"INSERT INTO {q}.unique_keys (handler, key, job_id) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
            "ON CONFLICT (handler, key) DO UPDATE SET job_id = excluded.job_id"
        )
        self.orphan_keys = (
            f"SELECT k.handler, k.key FROM {q}.unique_keys AS k "
            f"WHERE NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.id = k.job_id) LIMIT %s"
        )
        self.forget_keys = (
            f"DELETE FROM {q}.unique_keys AS k "
            "WHERE (k.handler, k.key) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
            f"AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.id = k.job_id)"
        )


class UniqueKeys:
    """``add_unique`` and the upkeep of the key table."""

    def __init__(self, db: Connections, sql: Statements) -> None:
        self._db = db
        self._sql = sql
        self._keys = UniqueStatements(sql.schema)

    def _lock(self, handler: str, key: str | None) -> int:
        return group_lock(self._sql.schema, LockKind.UNIQUE, handler, key)

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`.

        With ``connection`` (a caller's DB-API connection) everything runs in the
        caller's transaction: the jobs and their keys commit with it, and racers
        for the same keys wait on the key locks until it ends.
        """
        check_new_jobs(jobs)
        decided: list[Job] = []
        if connection is not None:
            try:
                with connection.cursor() as cur:
                    return self._decide_and_add(cur, jobs, now)
            except Exception as exc:
                if sqlstate(exc) == "23505":
                    raise ValueError("a job with one of these ids exists already") from exc
                raise

        def write(conn: psycopg.Connection[Any]) -> list[Job]:
            with conn.transaction(), conn.cursor() as cur:
                decided[:] = self._decide_and_add(cur, jobs, now)
            return decided

        def landed(conn: psycopg.Connection[Any]) -> Any:
            # The reply was lost: if any new job exists, the transaction committed.
            row = conn.execute(self._sql.count_ids, ([job.id for job in jobs],)).fetchone()
            return list(decided) if row and row[0] and decided else RETRY

        try:
            result: list[Job] = self._db.uncertain(write, landed)
        except StorageError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise ValueError("a job with one of these ids exists already") from None
            raise
        return result

    def _decide_and_add(self, cur: Any, jobs: Sequence[Job], now: datetime) -> list[Job]:
        """Lock the keys, read their holders, add the jobs whose keys are free (one transaction)."""
        sql, keys_sql = self._sql, self._keys
        keys = sorted({(job.handler, job.unique_key) for job in jobs if job.unique_key is not None})
        for lock in sorted({self._lock(h, k) for h, k in keys}):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        cur.execute(keys_sql.holders, ([h for h, _ in keys], [k for _, k in keys]))
        stored = {(row[0], row[1]): row_to_job(row[2:]) for row in cur.fetchall()}
        taken: dict[tuple[str, str | None], Job] = {}
        result: list[Job] = []
        for job in jobs:
            if job.unique_key is None:
                result.append(job)
                continue
            key = (job.handler, job.unique_key)
            if key not in taken:
                holder = stored.get(key)
                taken[key] = holder if holder and holds_key(holder, now, job) else job
            result.append(taken[key])
        new = [job for job, got in zip(jobs, result, strict=True) if got is job]
        if new:
            cur.execute(sql.insert, insert_params(new, sql.channel))
        mine = [job for job in new if job.unique_key is not None]
        if mine:
            cur.execute(
                keys_sql.point_keys,
                ([j.handler for j in mine], [j.unique_key for j in mine], [j.id for j in mine]),
            )
        return result

    def forget_purged_keys(self, *, batch: int = 1000) -> int:
        """Delete key rows whose job was purged (they take no key), under each key's lock.

        The lock, taken before the delete reads, makes the delete see every
        enqueue of those keys that committed, and keeps new ones out until it ends,
        so a key row just pointed at a new job is never deleted.
        """
        keys_sql = self._keys

        def forget(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                rows = conn.execute(keys_sql.orphan_keys, (batch,)).fetchall()
                if not rows:
                    return 0
                for lock in sorted({self._lock(h, k) for h, k in rows}):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                done = conn.execute(
                    keys_sql.forget_keys, ([r[0] for r in rows], [r[1] for r in rows])
                )
                return done.rowcount

        removed: int = self._db.retrying(forget)
        return removed
