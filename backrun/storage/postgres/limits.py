"""Limited claims in PostgreSQL: per-handler advisory locks, then fresh reads.

Under READ COMMITTED each statement reads a fresh snapshot, so a transaction
that takes a transaction-level advisory lock and *then* reads sees everything
committed by every earlier holder of that lock.

A claim picks due rows ``FOR UPDATE SKIP LOCKED`` one at a time. For a
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
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg

from backrun.limits import CONCURRENCY, RATE, HandlerLimits, LimitedClaim, forget_before

from .options import Options
from .pool import Connections
from .rows import COLUMNS, row_to_job
from .schema import READY, LockKind, check_schema, group_lock
from .statements import Statements

__all__ = ["LimitedClaims"]

_MAX_PICKS = 200


class LimitStatements:
    """The statements of limited claims, bound to one schema."""

    def __init__(self, schema: str) -> None:
        q = check_schema(schema)
        jobs = f"{q}.jobs"
        self.schema = schema
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

    def lock_key(self, handler: str) -> int:
        """The advisory lock number of one limited handler of this schema."""
        return group_lock(self.schema, LockKind.LIMITS, handler, None)


class LimitedClaims:
    """:meth:`Storage.claim_limited` for the PostgreSQL store."""

    def __init__(self, db: Connections, sql: Statements, options: Options) -> None:
        self._db = db
        self._sql = sql
        self._options = options
        self._lim = LimitStatements(sql.schema)

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
            self._sql,
            self._lim,
            queues=queues,
            limit=limit,
            now=now,
            worker_id=worker_id,
            lease=lease,
            limits=limits,
            synchronous=self._options.synchronous_claims,
        )


def claim_limited(
    db: Connections,
    sql: Statements,
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
        rows = conn.execute(sql.claimed_in_batch, (worker_id, batch)).fetchall()
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
                lock = lim.lock_key(handler)
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
