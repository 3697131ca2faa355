"""Worker liveness in the PostgreSQL store: registration, heartbeats, orphans, records.

Which running jobs are orphans is decided by each worker's database session
(an advisory lock its process holds, freed by the server when the process
dies; see ``sessions``), with the workers table of heartbeats as the fallback
for a process that hangs with its connection open. Liveness is the one
judgement that must agree across machines, so it uses the database's own
``now()``: a heartbeat stores ``expires_at = now() + (lease_until - now)``
and the orphan scan compares that with the database's ``now()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from backrun.jobs import Job
from backrun.workerinfo import WorkerInfo

from .options import Options
from .pool import Connections
from .rows import row_to_job
from .sessions import SessionLock, session_key
from .statements import Statements

__all__ = ["Liveness"]

log = logging.getLogger("backrun.storage.postgres")


class Liveness:
    """Workers' rows, their session locks (one thread each) and the orphan scan."""

    def __init__(self, db: Connections, sql: Statements, options: Options) -> None:
        self._db = db
        self._sql = sql
        self._options = options
        self._lock = threading.Lock()
        self._closed = False
        #: The session locks this store holds, by worker id.
        self.sessions: dict[str, SessionLock] = {}

    def heartbeat(
        self, jobs: Sequence[Job], *, worker_id: str, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Renew the worker row and the leases of ``jobs``; return the ids still held."""
        params = {
            "worker": worker_id,
            "ttl": max(lease_until - now, timedelta(0)),
            "until": lease_until,
            "ids": [job.id for job in jobs],
            "tokens": [job.claim_token for job in jobs],
        }
        sql = self._sql.heartbeat
        rows = self._db.retrying(lambda conn: conn.execute(sql, params).fetchall())
        renewed: dict[str, bool] = dict(rows)
        return {job.id for job in jobs if renewed.get(job.id, True)}

    def register(self, worker_id: str, *, now: datetime) -> None:
        """Insert or refresh the worker's row, and hold its session lock while it lives."""
        ttl = self._options.register_ttl
        self.heartbeat((), worker_id=worker_id, now=now, lease_until=now + ttl)
        with self._lock:
            if worker_id in self.sessions or self._closed:
                return
            forget = self._sql.session_forget
            session = self.sessions[worker_id] = SessionLock(
                self._db.conninfo,
                self._db.connect_kwargs,
                worker_id=worker_id,
                key=session_key(self._sql.schema, worker_id),
                statements=self._sql,
                forget=lambda: self._db.retrying(lambda conn: conn.execute(forget, (worker_id,))),
                outage=self._db.outage,
            )
        if not session.start(wait=self._db.timeout):
            log.warning("worker %s: no session lock yet; judged by its lease", worker_id)

    def unregister(self, worker_id: str) -> None:
        """Release the worker's session lock and delete its row."""
        with self._lock:
            session = self.sessions.pop(worker_id, None)
        if session is not None:
            session.stop()
        sql = self._sql.unregister
        self._db.retrying(lambda conn: conn.execute(sql, (worker_id,)))

    def orphans(self) -> list[Job]:
        """Running jobs whose worker is gone, judged by the database's locks and clock."""
        sql, grace = self._sql.orphans, self._options.session_grace
        rows = self._db.retrying(lambda conn: conn.execute(sql, (grace,)).fetchall())
        return [row_to_job(row) for row in rows]

    def forget_dead(self) -> None:
        """Delete the rows of workers dead for an hour."""
        sql = self._sql.forget_workers
        self._db.retrying(lambda conn: conn.execute(sql, (timedelta(hours=1),)))

    def publish(self, info: WorkerInfo, *, ttl: timedelta) -> None:
        """Store a worker's record on its row, live for ``ttl`` by the database's clock."""
        params = {"id": info.id, "info": orjson.dumps(info.to_dict()).decode(), "ttl": ttl}
        sql = self._sql.publish_worker
        self._db.retrying(lambda conn: conn.execute(sql, params))

    def live_records(self) -> list[WorkerInfo]:
        """Records of workers live by the database's clock."""
        sql = self._sql.live_workers
        rows: list[Any] = self._db.retrying(lambda conn: conn.execute(sql).fetchall())
        found: list[WorkerInfo] = []
        for (text,) in rows:
            try:
                found.append(WorkerInfo.from_dict(orjson.loads(text)))
            except ValueError:
                continue  # written by another version; not ours to show
        return found

    def close(self) -> None:
        """Stop every session lock thread; later registrations take none."""
        with self._lock:
            self._closed = True
            sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.stop()
