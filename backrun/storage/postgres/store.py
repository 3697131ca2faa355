"""The PostgreSQL store: a thin :class:`PostgresStorage` that delegates to its parts.

Claims are one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`` round
trip; enqueues, and cancels of running jobs, ``NOTIFY`` a channel that workers
``LISTEN`` on. Which running jobs are orphans is decided by each worker's
database session (an advisory lock its process holds, freed by the server when
the process dies: recovery in about ``recovery_interval + session_grace``; see
``sessions``), with a workers table of heartbeats as the fallback for
a process that hangs with its connection open.

Time: the contract hands every call a ``now`` from the engine's clock, and this
store honours it for what is recorded in jobs (due-ness, ``started_at``,
``lease_expires_at``, ``finished_at``), so a test's fake clock drives it exactly
like every other store. Liveness is the one judgement that must agree across
machines, so it uses the database's own ``now()``: a heartbeat stores
``expires_at = now() + (lease_until - now)`` and ``orphans`` compares that with
the database's ``now()``. Skewed worker clocks cannot make a live worker look
dead nor keep a dead one alive.

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
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from backrun.jobs import FINISHED_STATES, Job, JobState, Progress
from backrun.limits import HandlerLimits, LimitedClaim
from backrun.storage.base import Capabilities, Storage
from backrun.workerinfo import WorkerInfo

from .changes import Changes
from .claims import Claims
from .limits import LimitedClaims
from .liveness import Liveness
from .notifications import Listener
from .options import Options
from .pool import Connections
from .queries import Queries
from .schema import Schema
from .statements import Statements
from .unique import UniqueKeys
from .writes import OwnerWrites

__all__ = ["PostgresStorage"]


class PostgresStorage(Storage):
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
            free before its running jobs are orphans (see ``sessions``);
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
        self.poll_interval = poll_interval
        self._options = Options(
            retention=retention,
            purge_batch=purge_batch,
            register_ttl=register_ttl,
            synchronous_claims=synchronous_claims,
            session_grace=session_grace,
        )
        sql = self._sql = Statements(schema)
        db = self._db = Connections(dsn_or_pool, schema=schema, size=pool_size, timeout=timeout)
        options = self._options
        self._schema = Schema(db, schema)
        self._changes = Changes(db, sql, options)
        self._queries = Queries(db, sql)
        self._claims = Claims(db, sql, options)
        self._limited = LimitedClaims(db, sql, options)
        self._writes = OwnerWrites(db, sql)
        self._liveness = Liveness(db, sql, options)
        self._unique = UniqueKeys(db, sql)
        self._listener = Listener(
            db.conninfo,
            sql.channel,
            name=f"backrun-listen-{schema}",
            connect_kwargs=db.connect_kwargs,
            outage=db.outage,
        )
        self._lock = threading.Lock()
        self._closed = False
        # Close before the interpreter finalizes: psycopg's pool cannot join its
        # threads from a finalizer there (Python 3.13 waits 5 s per thread).
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- settings the parts read at call time ----------------------------------------

    @property
    def retention(self) -> timedelta:
        """How long finished jobs are kept before :meth:`maintain` purges them."""
        return self._options.retention

    @retention.setter
    def retention(self, value: timedelta) -> None:
        self._options.retention = value

    @property
    def purge_batch(self) -> int:
        """Rows deleted per statement when purging."""
        return self._options.purge_batch

    @purge_batch.setter
    def purge_batch(self, value: int) -> None:
        self._options.purge_batch = value

    @property
    def register_ttl(self) -> timedelta:
        """How long a registered worker counts as live before its first heartbeat."""
        return self._options.register_ttl

    @register_ttl.setter
    def register_ttl(self, value: timedelta) -> None:
        self._options.register_ttl = value

    @property
    def synchronous_claims(self) -> bool:
        """True if each claim is flushed to disk before it returns."""
        return self._options.synchronous_claims

    @synchronous_claims.setter
    def synchronous_claims(self, value: bool) -> None:
        self._options.synchronous_claims = value

    @property
    def session_grace(self) -> timedelta:
        """How long a worker's session lock stays free before its jobs are orphans."""
        return self._options.session_grace

    @session_grace.setter
    def session_grace(self, value: timedelta) -> None:
        self._options.session_grace = value

    # -- schema ---------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create or upgrade the schema's tables; safe to run again and concurrently.

        Returns:
            The versions applied by this call (empty when already up to date).
        """
        return self._schema.migrate()

    # -- adding ---------------------------------------------------------------------

    def add(self, job: Job, *, connection: Any = None) -> None:
        """Persist a new job and notify listeners; see :meth:`Storage.add`.

        Args:
            job: the new job.
            connection: a caller's open DB-API connection (psycopg 3, psycopg2
                or Django's ``connection``) to insert through. The job then
                commits or rolls back with the caller's transaction, and the
                wake-up notification is sent only on commit.
        """
        self._changes.add_many([job], connection=connection)

    def add_in_transaction(self, jobs: Sequence[Job], *, connection: Any) -> None:
        """Insert jobs through the caller's connection; see :meth:`Storage.add_in_transaction`."""
        if connection is None:
            raise TypeError("add_in_transaction needs the caller's connection=")
        self._changes.add_many(jobs, connection=connection)

    def add_many(self, jobs: Sequence[Job], *, connection: Any = None) -> None:
        """Persist several new jobs in one statement, all or none; see :meth:`add`."""
        self._changes.add_many(jobs, connection=connection)

    def add_unique(
        self, jobs: Sequence[Job], *, now: datetime, connection: Any = None
    ) -> list[Job]:
        """Add jobs, deduplicating unique keys atomically; see :meth:`Storage.add_unique`."""
        return self._unique.add_unique(jobs, now=now, connection=connection)

    # -- reading --------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """Return the job or ``None``; see :meth:`Storage.get`."""
        return self._queries.get(job_id)

    def find(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Return matching jobs, oldest id first; see :meth:`Storage.find`."""
        return self._queries.find(state=state, queue=queue, limit=limit)

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
        return self._queries.find_page(
            state=state, queue=queue, handler=handler, offset=offset, limit=limit
        )

    def counts(self) -> dict[tuple[str, JobState], int]:
        """Count jobs per (queue, state), exactly; see :meth:`Storage.counts`.

        Costs O(waiting + running) whatever the number of finished jobs:
        waiting and running rows are counted through their partial indexes,
        finished ones are kept by triggers in the same transaction as each
        state change (``job_counts``), so the figures are exact.
        """
        return self._queries.counts()

    def finish_counts(
        self, *, since: datetime, until: datetime, buckets: int
    ) -> dict[JobState, list[int]]:
        """Finishes per state and bucket, counted in SQL; see :meth:`Storage.finish_counts`."""
        return self._queries.finish_counts(since=since, until=until, buckets=buckets)

    def next_run_at(self, *, queues: Collection[str] | None) -> datetime | None:
        """Earliest run_at of a waiting job; see :meth:`Storage.next_run_at`."""
        return self._queries.next_run_at(queues=queues)

    def oldest_due(self, *, now: datetime) -> dict[str, datetime]:
        """Earliest run_at of due jobs per queue; see :meth:`Storage.oldest_due`."""
        return self._queries.oldest_due(now=now)

    def cancel_requests(self, job_ids: Collection[str]) -> set[str]:
        """Return the ids among ``job_ids`` that are RUNNING with a cancel requested.

        One indexed query, whatever the number of ids; unknown ids are ignored.
        """
        return self._queries.cancel_requests(job_ids)

    def paused_queues(self) -> frozenset[str]:
        """The paused queues; see :meth:`Storage.paused_queues`."""
        return self._queries.paused_queues()

    # -- claiming and owning --------------------------------------------------------

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
        return self._claims.claim(
            queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease
        )

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
        return self._limited.claim_limited(
            queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease, limits=limits
        )

    def update(self, job: Job) -> None:
        """Write a claimed job as its owner; see :meth:`Storage.update`."""
        self._writes.update(job)

    def record_progress(self, job: Job, progress: Progress) -> None:
        """Store a running job's progress, as its owner; see the base class."""
        self._writes.record_progress(job, progress)

    # -- workers --------------------------------------------------------------------

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew the worker row and the leases of ``jobs``; see :meth:`Storage.heartbeat`."""
        return self._liveness.heartbeat(jobs, worker_id=worker_id, now=now, lease_until=lease_until)

    def register_worker(self, worker_id: str, *, now: datetime) -> None:
        """Insert or refresh the worker's row, and hold its session lock while it lives.

        The row is live for ``register_ttl`` until a heartbeat. The advisory
        lock, held on a connection of its own until :meth:`unregister_worker`,
        lets other workers see at once that this process died (see
        ``sessions``); this waits up to ``timeout`` for it, and without it the
        worker is judged by its heartbeats alone.
        """
        self._liveness.register(worker_id, now=now)

    def unregister_worker(self, worker_id: str) -> None:
        """Release the worker's session lock and delete its row; its running jobs become orphans."""
        self._liveness.unregister(worker_id)

    def orphans(self, *, now: datetime) -> list[Job]:
        """Running jobs whose worker is gone: its session lock free, or its lease expired.

        Liveness is judged by the database (its locks and its clock), not by
        ``now``; see ``sessions`` for the session lock's rules.
        """
        return self._liveness.orphans()

    def publish_worker(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Store the record on the worker's row; see :meth:`Storage.publish_worker`."""
        self._liveness.publish(info, ttl=ttl)

    def live_workers(self, *, now: datetime) -> list[WorkerInfo]:
        """Records of workers live by the database's clock; see :meth:`Storage.live_workers`."""
        return self._liveness.live_records()

    # -- changing unowned jobs ------------------------------------------------------

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a job; see :meth:`Storage.cancel`."""
        return self._changes.cancel(job_id, now=now)

    def requeue(self, job_id: str, *, now: datetime) -> Job:
        """Run a job again now; see :meth:`Storage.requeue`."""
        return self._changes.requeue(job_id, now=now)

    def pause_queue(self, queue: str, *, now: datetime) -> bool:
        """Insert the queue's pause row; see :meth:`Storage.pause_queue`."""
        return self._changes.pause_queue(queue, now=now)

    def resume_queue(self, queue: str) -> bool:
        """Delete the pause row and wake idle workers; see :meth:`Storage.resume_queue`."""
        return self._changes.resume_queue(queue)

    # -- housekeeping ---------------------------------------------------------------

    def purge(self, *, before: datetime, states: Collection[JobState] = FINISHED_STATES) -> int:
        """Delete old finished jobs in batches, each its own short transaction."""
        return self._changes.purge(before=before, states=states)

    def maintain(self, *, now: datetime) -> None:
        """Purge finished jobs past ``retention``, forget long-dead workers, fold counts."""
        self._changes.purge(before=now - self.retention)
        self._liveness.forget_dead()
        self._changes.compact_counts()
        self._unique.forget_purged_keys()

    def forget_purged_keys(self) -> int:
        """Delete the key rows of purged jobs (``maintain`` calls it); return how many."""
        return self._unique.forget_purged_keys()

    # -- notifications and lifetime -------------------------------------------------

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
        self._liveness.close()
        self._db.close()


def _close_at_exit(ref: weakref.ref[PostgresStorage]) -> None:
    store = ref()
    if store is not None:
        store.close()
