"""PostgreSQL storage: one jobs table shared by workers on many machines.

Claims are one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`` round
trip; enqueues, and cancels of running jobs, ``NOTIFY`` a channel that workers
``LISTEN`` on. Which running jobs are orphans is decided by each worker's
database session (an advisory lock its process holds, freed by the server when
the process dies: recovery in about ``recovery_interval + session_grace``; see
``_postgres_session``), with a workers table of heartbeats as the fallback for
a process that hangs with its connection open.

Counting: :meth:`PostgresStorage.counts` reads waiting and running rows
through their partial indexes and finished ones from ``job_counts``, deltas
kept by triggers in the same transaction as each change, so a metrics scrape
costs O(waiting + running) and stays exact however many finished rows are kept.

Time: the contract hands every call a ``now`` from the engine's clock, and this
store honours it for what is recorded in jobs (due-ness, ``started_at``,
``lease_expires_at``, ``finished_at``), so a test's fake clock drives it exactly
like every other store. Liveness is the one judgement that must agree across
machines, so it uses the database's own ``now()``: a heartbeat stores
``expires_at = now() + (lease_until - now)`` and ``orphans`` compares that with
the database's ``now()``. Skewed worker clocks cannot make a live worker look
dead nor keep a dead one alive.

Dropped connections: reads and idempotent writes are retried once; a write
that may or may not have committed is checked against the database before it
is retried (see ``_postgres_pool``). A claim stamps its jobs' tokens with a
per-call prefix, so a claim whose reply was lost still hands over what it
took. Should even that check fail, the job sits RUNNING under a live worker
that does not know it holds it; each heartbeat stamps the jobs it renews, so
such a job is reported as an orphan once its worker has gone a full lease
without renewing it.

Durability: ``add`` and ``update`` commit synchronously (a job, and how its
attempt ended, survive a database crash once the call returns). Claims commit
with ``synchronous_commit = off`` unless ``synchronous_claims=True``: a
PostgreSQL crash may forget a claim of the last fraction of a second, and the
job, back to its previous state, runs again (at-least-once, as after any
crash); a later synchronous commit flushes every earlier claim with it. This
makes a claim about five times cheaper on a disk where a flush costs a
millisecond or more.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'backrun[postgres]'"
    ) from exc

from backrun.errors import JobNotFound, LeaseLost, StorageError
from backrun.jobs import FINISHED_STATES, Job, JobState, check_job_id

from ._postgres_limits import PostgresLimits
from ._postgres_listen import Listener
from ._postgres_ops import PostgresOpsMixin
from ._postgres_pool import RETRY, Connections
from ._postgres_results import PostgresResultsMixin
from ._postgres_session import SessionLock, session_key
from ._postgres_sql import Statements, insert_params, row_to_job, update_params
from .base import READY_STATES, Capabilities, Storage

__all__ = ["PostgresStorage"]

log = logging.getLogger("backrun.storage.postgres")

_MIGRATION_LOCK = 0x6261636B72756E  # "backrun": serialises concurrent migrate() calls
_COUNTS_LOCK = 0x6261636B72756E01  # one compaction of job_counts at a time


class PostgresStorage(PostgresLimits, PostgresOpsMixin, PostgresResultsMixin, Storage):
    """A store in a PostgreSQL schema, for workers and producers on many machines.

    Args:
        dsn_or_pool: a libpq connection string / URL, or a
            ``psycopg_pool.ConnectionPool`` the caller owns (not closed by
            :meth:`close`).
        schema: the schema holding the tables (created by :meth:`migrate`).
        pool_size: most connections the store's own pool opens.
        timeout: seconds to wait for a connection before raising
            :class:`~backrun.errors.StorageError`.
        poll_interval: seconds between checks for new jobs when a
            notification is missed; see :attr:`Storage.poll_interval`.
        retention: how long finished jobs are kept before :meth:`maintain`
            purges them.
        purge_batch: rows deleted per statement when purging.
        register_ttl: how long a registered worker counts as live before its
            first heartbeat; keep it at least the engine's ``lease``.
        synchronous_claims: flush each claim to disk before returning it
            (slower; see the module docstring).
        session_grace: how long a registered worker's advisory lock must stay
            free before its running jobs are orphans (see ``_postgres_session``);
            recovery after a crash takes about this plus ``recovery_interval``.
    """

    capabilities = Capabilities(transactional_enqueue=True, unique_jobs=True, limits=True)

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool[Any],
        *,
        schema: str = "backrun",
        pool_size: int = 8,
        timeout: float = 5.0,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        purge_batch: int = 1000,
        register_ttl: timedelta = timedelta(seconds=60),
        synchronous_claims: bool = False,
        session_grace: timedelta = timedelta(seconds=1),
    ) -> None:
        if session_grace < timedelta(0):
            raise ValueError("session_grace must not be negative")
        self.schema = schema
        self._sql = Statements(schema)
        self.poll_interval = poll_interval
        self.retention = retention
        self.purge_batch = purge_batch
        self.register_ttl = register_ttl
        self.synchronous_claims = synchronous_claims
        self.session_grace = session_grace
        self._sessions: dict[str, SessionLock] = {}
        self._db = Connections(dsn_or_pool, schema=schema, size=pool_size, timeout=timeout)
        self._lock = threading.Lock()
        self._listener = Listener(
            self._db.conninfo,
            self._sql.channel,
            name=f"backrun-listen-{schema}",
            connect_kwargs=self._db.connect_kwargs,
            outage=self._db.outage,
        )
        self._closed = False
        # Close before the interpreter finalizes: psycopg's pool cannot join its
        # threads from a finalizer there (Python 3.13 waits 5 s per thread).
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- schema -------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create or upgrade the schema's tables; safe to run again and concurrently.

        Returns:
            The versions applied by this call (empty when already up to date).
        """
        applied: list[int] = []
        with self._db.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(self._sql.create_schema)
            conn.execute(self._sql.create_versions)
            done = {row[0] for row in conn.execute(self._sql.applied_versions)}
            for version, statement in self._sql.migrations:
                if version in done:
                    continue
                conn.execute(statement)
                conn.execute(self._sql.record_version, (version,))
                applied.append(version)
        if applied:
            log.info("schema %s migrated to version %d", self.schema, applied[-1])
        return applied

    # -- adding -------------------------------------------------------------------

    def add(self, job: Job, *, connection: Any = None) -> None:
        """Persist a new job and notify listeners; see :meth:`Storage.add`.

        Args:
            job: the new job.
            connection: a caller's open DB-API connection (psycopg 3, psycopg2
                or Django's ``connection``) to insert through. The job then
                commits or rolls back with the caller's transaction, and the
                wake-up notification is sent only on commit.
        """
        self.add_many([job], connection=connection)

    def add_in_transaction(self, jobs: Sequence[Job], *, connection: Any) -> None:
        """Insert jobs through the caller's connection; see :meth:`Storage.add_in_transaction`."""
        if connection is None:
            raise TypeError("add_in_transaction needs the caller's connection=")
        self.add_many(jobs, connection=connection)

    def add_many(self, jobs: Sequence[Job], *, connection: Any = None) -> None:
        """Persist several new jobs in one statement, all or none; see :meth:`add`."""
        for job in jobs:
            check_job_id(job.id)
            if job.state not in READY_STATES or job.run_at is None:
                raise ValueError("a new job must be SCHEDULED or QUEUED with a run_at")
        if len({job.id for job in jobs}) != len(jobs):
            raise ValueError("duplicate job ids in batch")
        if not jobs:
            return
        params = insert_params(jobs, self._sql.channel)
        if connection is not None:
            try:
                with connection.cursor() as cur:
                    cur.execute(self._sql.insert, params)
            except Exception as exc:
                if _sqlstate(exc) == "23505":
                    raise ValueError("a job with one of these ids exists already") from exc
                raise
            return
        ids = [job.id for job in jobs]

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(self._sql.count_ids, (ids,)).fetchone()
            return None if row and row[0] == len(ids) else RETRY

        try:
            self._db.uncertain(lambda conn: conn.execute(self._sql.insert, params), landed)
        except StorageError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise ValueError("a job with one of these ids exists already") from None
            raise

    # -- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """Return the job or ``None``; see :meth:`Storage.get`."""
        check_job_id(job_id)
        row = self._db.retrying(lambda conn: conn.execute(self._sql.get, (job_id,)).fetchone())
        return None if row is None else row_to_job(row)

    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return matching jobs, oldest id first; see :meth:`Storage.find`."""
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            where.append("state = %s")
            params.append(JobState(state).value)
        if queue is not None:
            where.append("queue = %s")
            params.append(queue)
        query = self._sql.find + (" WHERE " + " AND ".join(where) if where else "")
        query += " ORDER BY id LIMIT %s"
        params.append(limit)
        rows = self._db.retrying(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_job(row) for row in rows]

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Count jobs per (queue, state), exactly; see :meth:`Storage.counts`.

        Costs O(waiting + running) whatever the number of finished jobs:
        waiting and running rows are counted through their partial indexes,
        finished ones are kept by triggers in the same transaction as each
        state change (``job_counts``), so the figures are exact.
        """

        def count(conn: psycopg.Connection[Any]) -> Any:
            with conn.transaction():
                # Stale statistics must not turn the partial-index counts into a
                # full scan; and the cost that setting adds must not trigger JIT
                # compilation (seconds per call).
                conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
                return conn.execute(self._sql.counts).fetchall()

        rows = self._db.retrying(count)
        return {(queue, JobState(state)): int(n) for queue, state, n in rows}

    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job; see :meth:`Storage.next_run_at`."""
        query, params = self._sql.next_run_at, []
        if queues is not None:
            query += " AND queue = ANY(%s)"
            params.append(list(queues))
        row = self._db.retrying(lambda conn: conn.execute(query, params).fetchone())
        value: datetime | None = row[0]
        return None if value is None else value.astimezone(UTC)

    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue; see :meth:`Storage.oldest_due`."""
        rows = self._db.retrying(lambda conn: conn.execute(self._sql.oldest_due, (now,)).fetchall())
        return {queue: run_at.astimezone(UTC) for queue, run_at in rows}

    # -- claiming and owning ------------------------------------------------------

    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs in one round trip; see :meth:`Storage.claim`."""
        if limit <= 0 or (queues is not None and not queues):
            return []
        params: dict[str, Any] = {
            "now": now,
            "limit": limit,
            "worker": worker_id,
            "until": now + lease,
        }
        query = self._sql.claim_head
        if queues is not None:
            query += " AND queue = ANY(%(queues)s)"
            params["queues"] = list(queues)
        query += self._sql.claim_tail
        params["batch"] = batch = secrets.token_hex(8)

        def claim(conn: psycopg.Connection[Any]) -> Any:
            with conn.transaction():
                if not self.synchronous_claims:
                    conn.execute("SET LOCAL synchronous_commit = off")
                return conn.execute(query, params).fetchall()

        def landed(conn: psycopg.Connection[Any]) -> Any:
            # The claim's reply was lost: whatever it took carries this batch's token prefix.
            return conn.execute(self._sql.claimed_in_batch, (worker_id, batch)).fetchall()

        rows = self._db.uncertain(claim, landed)
        jobs = [row_to_job(row) for row in rows]
        jobs.sort(key=lambda job: (-job.priority, job.run_at, job.id))
        return jobs

    def update(self, job: Job) -> None:
        """Write a claimed job as its owner; see :meth:`Storage.update`."""
        check_job_id(job.id)
        params = update_params(job, self._sql.channel)
        lost = LeaseLost(f"job {job.id} is no longer held under this claim")

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(self._sql.get, (job.id,)).fetchone()
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

        if not self._db.uncertain(lambda conn: self._write_update(conn, job, params), landed):
            raise lost

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew the worker row and the leases of ``jobs``; see :meth:`Storage.heartbeat`."""
        params = {
            "worker": worker_id,
            "ttl": max(lease_until - now, timedelta(0)),
            "until": lease_until,
            "ids": [job.id for job in jobs],
            "tokens": [job.claim_token for job in jobs],
        }
        rows = self._db.retrying(lambda conn: conn.execute(self._sql.heartbeat, params).fetchall())
        renewed: dict[str, bool] = dict(rows)
        return {job.id for job in jobs if renewed.get(job.id, True)}

    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        """Insert or refresh the worker's row, and hold its session lock while it lives.

        The row is live for ``register_ttl`` until a heartbeat. The advisory
        lock, held on a connection of its own until :meth:`unregister_worker`,
        lets other workers see at once that this process died (see
        ``_postgres_session``); this waits up to ``timeout`` for it, and without
        it the worker is judged by its heartbeats alone.
        """
        self.heartbeat((), worker_id=worker_id, now=now, lease_until=now + self.register_ttl)
        with self._lock:
            if worker_id in self._sessions or self._closed:
                return
            session = self._sessions[worker_id] = SessionLock(
                self._db.conninfo,
                self._db.connect_kwargs,
                worker_id=worker_id,
                key=session_key(self.schema, worker_id),
                statements=self._sql,
                forget=lambda: self._db.retrying(
                    lambda conn: conn.execute(self._sql.session_forget, (worker_id,))
                ),
                outage=self._db.outage,
            )
        if not session.start(wait=self._db.timeout):
            log.warning("worker %s: no session lock yet; judged by its lease", worker_id)

    def unregister_worker(self, worker_id: str) -> None:
        """Release the worker's session lock and delete its row; its running jobs become orphans."""
        with self._lock:
            session = self._sessions.pop(worker_id, None)
        if session is not None:
            session.stop()
        self._db.retrying(lambda conn: conn.execute(self._sql.unregister, (worker_id,)))

    def orphans(self, *, now: datetime) -> list[Job]:
        """Running jobs whose worker is gone: its session lock free, or its lease expired.

        Liveness is judged by the database (its locks and its clock), not by
        ``now``; see ``_postgres_session`` for the session lock's rules.
        """
        grace = self.session_grace
        rows = self._db.retrying(lambda conn: conn.execute(self._sql.orphans, (grace,)).fetchall())
        return [row_to_job(row) for row in rows]

    # -- changing unowned jobs ----------------------------------------------------

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        check_job_id(job_id)
        params = {"id": job_id, "now": now, "channel": self._sql.channel}
        # Cancelling twice ends where cancelling once does, so a dropped call is retried.
        # A RUNNING job's cancel is NOTIFYed: every process's subscribe() callbacks fire.
        row = self._db.retrying(lambda conn: conn.execute(self._sql.cancel, params).fetchone())
        if row is None:
            raise JobNotFound(job_id)
        return row_to_job(row)

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Return the ids among ``job_ids`` that are RUNNING with a cancel requested.

        One indexed query, whatever the number of ids; unknown ids are ignored.
        """
        ids = list(job_ids)
        if not ids:
            return set()
        for job_id in ids:
            check_job_id(job_id)
        rows = self._db.retrying(
            lambda conn: conn.execute(self._sql.cancel_requests, (ids,)).fetchall()
        )
        return {row[0] for row in rows}

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        check_job_id(job_id)
        params = {"id": job_id, "now": now, "channel": self._sql.channel}

        def requeue(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(self._sql.requeue, params).fetchone()
            if row is not None:
                return row
            found = conn.execute(self._sql.state_of, (job_id,)).fetchone()
            if found is None:
                raise JobNotFound(job_id)
            raise ValueError(f"job {job_id} is {found[0]}; it cannot be retried")

        def landed(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(self._sql.get, (job_id,)).fetchone()
            job = None if row is None else row_to_job(row)
            done = job is not None and job.state is JobState.QUEUED and job.run_at == now
            return row if done else RETRY

        return row_to_job(self._db.uncertain(requeue, landed))

    # -- housekeeping -------------------------------------------------------------

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete old finished jobs in batches, each its own short transaction."""
        wanted = [JobState(s).value for s in set(states) & FINISHED_STATES]
        if not wanted:
            return 0
        total = 0
        while True:
            with self._db.connect() as conn:
                cur = conn.execute(self._sql.purge_batch, (wanted, before, self.purge_batch))
                deleted = cur.rowcount
            total += deleted
            if deleted < self.purge_batch:
                return total

    def maintain(self, *, now: datetime) -> None:
        """Purge finished jobs past ``retention``, forget long-dead workers, fold counts."""
        self.purge(before=now - self.retention)
        self._db.retrying(
            lambda conn: conn.execute(self._sql.forget_workers, (timedelta(hours=1),))
        )
        self._db.retrying(self._compact_counts)
        self.forget_purged_keys()

    def _compact_counts(self, conn: psycopg.Connection[Any]) -> None:
        """Fold the finished-count deltas into one row per (queue, state); one caller at a time."""
        with conn.transaction():
            row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_COUNTS_LOCK,)).fetchone()
            if row and row[0]:
                conn.execute(self._sql.compact_counts)

    # -- notifications ------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on each enqueue or cancel notification, and after each reconnect.

        One listener thread per store holds a dedicated connection and
        reconnects with backoff; ``poll_interval`` covers what it misses.
        """
        return self._listener.add(callback)

    def close(self) -> None:
        """Stop the listener and close the pool (if this store opened it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener.stop()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.stop()
        self._db.close()


def _close_at_exit(ref: weakref.ref[PostgresStorage]) -> None:
    store = ref()
    if store is not None:
        store.close()


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg 3, psycopg2 or Django-wrapped database error."""
    for candidate in (exc, exc.__cause__):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None
