"""Unique jobs and limited claims in PostgreSQL: advisory locks, then fresh reads.

Both rest on one property of READ COMMITTED: each statement reads a fresh
snapshot. A transaction that takes a transaction-level advisory lock and
*then* reads sees everything committed by every earlier holder of that lock,
since they commit before it is released.

Uniqueness: the enqueue transaction locks each key (a 64-bit hash of schema,
handler and key; several in sorted order), reads ``unique_keys`` joined to
the job it names, inserts the jobs whose keys are free and points their keys
at them, then commits. Racers wait on the lock and then read the winner.

Limits: a claim picks due rows ``FOR UPDATE SKIP LOCKED`` one at a time. For a
limited job it locks its handler (a blocking wait for the first handler of
the transaction; a try for any other, so two claimers can never wait on each
other), counts the RUNNING limited rows of its group and the handler's starts
in the last ``per`` (``limit_starts``), and takes the row only if both allow.
A skipped group or handler is excluded from the next pick, so a limited job
never holds up the rest. A slot is a RUNNING row: it frees in the very update
that ends the run (or rescues the orphan), which also ``NOTIFY``s.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from backrun.errors import StorageError
from backrun.jobs import Job, check_job_id
from backrun.limits import (
    CONCURRENCY,
    RATE,
    HandlerLimits,
    LimitedClaim,
    forget_before,
    group_int,
    holds_key,
)

from ._postgres_pool import RETRY, Connections
from ._postgres_sql import COLUMNS, READY, Statements, check_schema, insert_params, row_to_job
from .base import READY_STATES

__all__ = [
    "LimitStatements",
    "PostgresLimits",
    "add_unique",
    "claim_limited",
    "forget_purged_keys",
]

_MAX_PICKS = 200


class LimitStatements:
    """The statements of this module, bound to one schema."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        jobs = f"{q}.jobs"
        self.schema = schema
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
        self.pick = (
            f"SELECT id, handler, limited, concurrency_key FROM {jobs} "
            f"WHERE state IN {READY} AND run_at <= %(now)s "
            f"AND queue NOT IN (SELECT queue FROM {q}.paused_queues) "
            "AND (%(any_queue)s OR queue = ANY(%(queues)s)) "
            "AND id <> ALL(%(seen)s) "
            "AND NOT (limited AND handler = ANY(%(rate_held)s)) "
            "AND NOT (limited AND (handler, coalesce(concurrency_key, '')) IN "
            "(SELECT * FROM unnest(%(held_h)s::text[], %(held_k)s::text[]))) "
            "ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        # The rest of the held groups' due jobs, to report as waiting too.
        self.held_due = (
            f"SELECT id, handler FROM {jobs} WHERE state IN {READY} AND run_at <= %(now)s "
            "AND limited AND id <> ALL(%(seen)s) "
            "AND (%(any_queue)s OR queue = ANY(%(queues)s)) "
            "AND (handler = ANY(%(rate_held)s) OR (handler, coalesce(concurrency_key, '')) IN "
            "(SELECT * FROM unnest(%(held_h)s::text[], %(held_k)s::text[]))) LIMIT 1000"
        )
        self.running_in_group = (
            f"SELECT count(*) FROM {jobs} WHERE state = 'running' AND limited "
            "AND handler = %s AND concurrency_key IS NOT DISTINCT FROM %s"
        )
        self.forget_starts = f"DELETE FROM {q}.limit_starts WHERE handler = %s AND started_at <= %s"
        self.starts = (
            f"SELECT started_at FROM {q}.limit_starts WHERE handler = %s AND started_at > %s "
            "ORDER BY started_at"
        )
        self.add_start = f"INSERT INTO {q}.limit_starts (handler, started_at) VALUES (%s, %s)"
        self.take = (
            f"UPDATE {jobs} SET state = 'running', attempts = attempts + 1, "
            "worker_id = %(worker)s, started_at = %(now)s, lease_expires_at = %(until)s, "
            "claim_token = %(batch)s || left(replace(gen_random_uuid()::text, '-', ''), 16), "
            f"renewed_at = now() WHERE id = %(id)s RETURNING {COLUMNS}"
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

    def lock_key(self, kind: str, handler: str, key: str | None) -> int:
        """The advisory lock number of one key or handler of this schema."""
        return group_int(f"{self.schema}\x00{kind}", handler, key)


def add_unique(
    db: Connections,
    sql: Statements,
    lim: LimitStatements,
    jobs: Sequence[Job],
    now: datetime,
    connection: Any = None,
) -> list[Job]:
    """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`.

    With ``connection`` (a caller's DB-API connection) everything runs in the
    caller's transaction: the jobs and their keys commit with it, and racers
    for the same keys wait on the key locks until it ends.
    """
    for job in jobs:
        check_job_id(job.id)
        if job.state not in READY_STATES or job.run_at is None:
            raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
    if len({job.id for job in jobs}) != len(jobs):
        raise ValueError("duplicate job ids in batch")
    decided: list[Job] = []
    if connection is not None:
        try:
            with connection.cursor() as cur:
                return _decide_and_add(cur, sql, lim, jobs, now)
        except Exception as exc:
            if _is_unique_violation(exc):
                raise ValueError("a job with one of these ids exists already") from exc
            raise

    def write(conn: psycopg.Connection[Any]) -> list[Job]:
        with conn.transaction(), conn.cursor() as cur:
            decided[:] = _decide_and_add(cur, sql, lim, jobs, now)
        return decided

    def landed(conn: psycopg.Connection[Any]) -> Any:
        # The reply was lost: if any new job exists, the transaction committed.
        row = conn.execute(sql.count_ids, ([job.id for job in jobs],)).fetchone()
        return list(decided) if row and row[0] and decided else RETRY

    try:
        result: list[Job] = db.uncertain(write, landed)
    except StorageError as exc:
        if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
            raise ValueError("a job with one of these ids exists already") from None
        raise
    return result


def _decide_and_add(
    cur: Any, sql: Statements, lim: LimitStatements, jobs: Sequence[Job], now: datetime
) -> list[Job]:
    """Lock the keys, read their holders, add the jobs whose keys are free (one transaction)."""
    keys = sorted({(job.handler, job.unique_key) for job in jobs if job.unique_key is not None})
    for lock in sorted({lim.lock_key("unique", h, k) for h, k in keys}):
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
    cur.execute(lim.holders, ([h for h, _ in keys], [k for _, k in keys]))
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
            lim.point_keys,
            ([j.handler for j in mine], [j.unique_key for j in mine], [j.id for j in mine]),
        )
    return result


def _is_unique_violation(exc: BaseException) -> bool:
    """True for a psycopg 3, psycopg2 or Django-wrapped unique violation (SQLSTATE 23505)."""
    for candidate in (exc, exc.__cause__):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code == "23505":
            return True
    return False


def forget_purged_keys(db: Connections, lim: LimitStatements, *, batch: int = 1000) -> int:
    """Delete key rows whose job was purged (they take no key), under each key's lock.

    The lock, taken before the delete reads, makes the delete see every
    enqueue of those keys that committed, and keeps new ones out until it ends,
    so a key row just pointed at a new job is never deleted.
    """

    def forget(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            rows = conn.execute(lim.orphan_keys, (batch,)).fetchall()
            if not rows:
                return 0
            for lock in sorted({lim.lock_key("unique", h, k) for h, k in rows}):
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            done = conn.execute(lim.forget_keys, ([r[0] for r in rows], [r[1] for r in rows]))
            return done.rowcount

    removed: int = db.retrying(forget)
    return removed


def claim_limited(
    db: Connections,
    lim: LimitStatements,
    *,
    queues: Collection[str] | None,
    limit: int,
    now: datetime,
    worker_id: str,
    lease: timedelta,
    limits: Mapping[str, HandlerLimits],
    synchronous: bool,
) -> LimitedClaim:
    """Claim, skipping jobs a limit holds back; see :meth:`Storage.claim_limited`."""
    if limit <= 0 or (queues is not None and not queues):
        return LimitedClaim([])
    batch = secrets.token_hex(8)
    base: dict[str, Any] = {
        "now": now,
        "any_queue": queues is None,
        "queues": list(queues or ()),
        "worker": worker_id,
        "until": now + lease,
        "batch": batch,
    }

    def claim(conn: psycopg.Connection[Any]) -> LimitedClaim:
        with conn.transaction():
            if not synchronous:
                conn.execute("SET LOCAL synchronous_commit = off")
            return _claim_in(conn, lim, base, limit, now, limits)

    def landed(conn: psycopg.Connection[Any]) -> Any:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM {check_schema(lim.schema)}.jobs WHERE state = 'running' "
            "AND worker_id = %s AND left(claim_token, 16) = %s",
            (worker_id, batch),
        ).fetchall()
        return LimitedClaim([row_to_job(row) for row in rows])

    result: LimitedClaim = db.uncertain(claim, landed)
    return result


def _claim_in(
    conn: psycopg.Connection[Any],
    lim: LimitStatements,
    base: dict[str, Any],
    limit: int,
    now: datetime,
    limits: Mapping[str, HandlerLimits],
) -> LimitedClaim:
    result = LimitedClaim([])
    seen: list[str] = []
    rate_held: list[str] = []
    held: list[tuple[str, str]] = []
    locked: set[str] = set()
    retry_at: datetime | None = None
    for _ in range(_MAX_PICKS):
        if len(result.jobs) >= limit:
            break
        params = {
            **base,
            "seen": seen,
            "rate_held": rate_held,
            "held_h": [h for h, _ in held],
            "held_k": [k for _, k in held],
        }
        row = conn.execute(lim.pick, params).fetchone()
        if row is None:
            break
        job_id, handler, limited, ckey = row
        seen.append(job_id)
        rules = limits.get(handler) if limited else None
        if rules is not None and rules.active:
            if handler not in locked:
                lock = lim.lock_key("limits", handler, None)
                if not locked:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                else:
                    got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock,)).fetchone()
                    if not (got and got[0]):
                        continue  # another claimer decides for this handler now; look again

                locked.add(handler)
            waited, opens = _held(conn, lim, handler, ckey, rules, now)
            if waited is not None:
                result.waiting.append((job_id, handler, waited))
                if waited == RATE:
                    rate_held.append(handler)
                    if opens is not None and (retry_at is None or opens < retry_at):
                        retry_at = opens
                else:
                    held.append((handler, ckey or ""))
                continue
            if rules.rate_limit is not None:
                conn.execute(lim.add_start, (handler, now))
        taken = conn.execute(lim.take, {**base, "id": job_id}).fetchone()
        if taken is not None:
            result.jobs.append(row_to_job(taken))
    if held or rate_held:
        params = {
            **base,
            "seen": seen,
            "rate_held": rate_held,
            "held_h": [h for h, _ in held],
            "held_k": [k for _, k in held],
        }
        kinds = dict.fromkeys(rate_held, RATE)
        for job_id, handler in conn.execute(lim.held_due, params).fetchall():
            result.waiting.append((job_id, handler, kinds.get(handler, CONCURRENCY)))
    return LimitedClaim(result.jobs, result.waiting, retry_at)


def _held(
    conn: psycopg.Connection[Any],
    lim: LimitStatements,
    handler: str,
    ckey: str | None,
    rules: HandlerLimits,
    now: datetime,
) -> tuple[str | None, datetime | None]:
    """Which limit holds a job of ``handler`` back (handler lock held), and when a window opens."""
    if rules.max_concurrency is not None:
        row = conn.execute(lim.running_in_group, (handler, ckey)).fetchone()
        if row is not None and row[0] >= rules.max_concurrency:
            return CONCURRENCY, None
    rate = rules.rate_limit
    if rate is not None:
        since = now - rate.per
        conn.execute(lim.forget_starts, (handler, forget_before(now, rate)))
        starts = [r[0] for r in conn.execute(lim.starts, (handler, since)).fetchall()]
        if len(starts) >= rate.n:
            return RATE, starts[-rate.n] + rate.per
    return None, None


class PostgresLimits:
    """:meth:`add_unique` and :meth:`claim_limited` for the PostgreSQL store."""

    _db: Connections
    _sql: Statements
    schema: str
    synchronous_claims: bool

    _limit_sql: LimitStatements | None = None

    def _limits_sql(self) -> LimitStatements:
        if self._limit_sql is None:
            self._limit_sql = LimitStatements(self.schema)
        return self._limit_sql

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`."""
        return add_unique(self._db, self._sql, self._limits_sql(), jobs, now, connection)

    def forget_purged_keys(self) -> int:
        """Delete the key rows of purged jobs (``maintain`` calls it); return how many."""
        return forget_purged_keys(self._db, self._limits_sql())

    def claim_limited(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
        limits: Mapping[str, HandlerLimits],
    ) -> LimitedClaim:
        """Claim, skipping jobs a limit holds back; see :meth:`Storage.claim_limited`."""
        return claim_limited(
            self._db,
            self._limits_sql(),
            queues=queues,
            limit=limit,
            now=now,
            worker_id=worker_id,
            lease=lease,
            limits=limits,
            synchronous=self.synchronous_claims,
        )
