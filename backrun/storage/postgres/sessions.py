"""A worker's liveness held by its database session: an advisory lock on its own connection.

While a worker lives, a thread of its process holds a session-level advisory
lock (key derived from the schema and worker id) on a dedicated connection and
records the key in the worker's row. When the process dies, by kill -9 or
power loss of its machine, the server ends the session and frees the lock, and
other workers' orphan scans see it within about ``recovery_interval`` rather
than a whole lease. The heartbeat and lease stay as the fallback: a process
that hangs with its connection open keeps the lock but stops heart-beating.

The race, and why it is safe. The lock's connection can also die while the
process lives (``pg_terminate_backend``, a server restart, a network cut). Then
the lock is free though the worker is alive. So a free lock is not enough:

* a scan that finds the lock free only *marks* the worker (``session_lost_at``,
  the database's clock); a scan that finds it held clears the mark;
* the worker's jobs are orphans only when a later scan finds the lock still
  free and the mark at least ``grace`` old;
* this thread notices a dead connection within about a second (it waits on the
  socket, which a terminated backend closes at once, and probes it), first asks
  through the pool that the row be judged by its lease alone (``session_key =
  NULL``), then reconnects (backoff capped at half a second), re-takes the lock
  and records the key again, clearing any mark.

A live worker whose lock connection died is thus judged by its lease until it
holds the lock again; the only window is a worker that can neither reach the
pool nor reconnect for ``grace`` while its lock is free, which is a worker
that cannot heartbeat either: a partitioned process. Its jobs then run again
elsewhere after ``grace`` instead of a lease, at least once as after any crash.
"""

from __future__ import annotations

import hashlib
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .health import Outage

__all__ = ["SessionLock", "session_key"]

log = logging.getLogger("backrun.storage.postgres")

_FIRST_DELAY = 0.05
_MAX_DELAY = 0.5
_PROBE_EVERY = 1.0  # seconds between probes of an idle lock connection
_TICK = 0.1  # how often the thread looks at its socket and its stop flag


def session_key(schema: str, worker_id: str) -> int:
    """The advisory-lock key of a worker: 64 bits of a hash of schema and id."""
    digest = hashlib.blake2b(f"backrun:{schema}:{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SessionLock:
    """Holds one worker's advisory lock on a dedicated connection, re-taking it when lost.

    Args:
        conninfo: how to connect (the store's DSN).
        connect_kwargs: extra connection settings (a caller's pool's).
        worker_id: the worker whose row records the key.
        key: the advisory-lock key (:func:`session_key`).
        statements: SQL to lock, unlock and record the key (``session_lock``,
            ``session_unlock``, ``session_held``).
        forget: run through the pool when the lock is lost: the worker's row
            is then judged by its lease alone until the lock is back.
        outage: where connection failures are reported (one log line each).
    """

    def __init__(
        self,
        conninfo: str,
        connect_kwargs: dict[str, Any],
        *,
        worker_id: str,
        key: int,
        statements: Any,
        forget: Callable[[], None],
        outage: Outage,
    ) -> None:
        self.worker_id = worker_id
        self.key = key
        self._conninfo = conninfo
        self._kwargs = {**connect_kwargs, "autocommit": True}
        self._kwargs.setdefault("connect_timeout", 5)
        self._sql = statements
        self._forget = forget
        self._outage = outage
        self._stop = threading.Event()
        self.held = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"backrun-session-{worker_id}", daemon=True
        )

    def start(self, wait: float) -> bool:
        """Start holding the lock; wait up to ``wait`` seconds for it. True if held."""
        self._thread.start()
        return self.held.wait(wait)

    def stop(self) -> None:
        """Release the lock and close the connection (waits a few seconds at most)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        delay = _FIRST_DELAY
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                    if self._take(conn):
                        delay = _FIRST_DELAY
                        self._hold(conn)
                        if self._stop.is_set():
                            conn.execute(self._sql.session_unlock, (self.key,))
                            return
            except psycopg.Error as exc:
                if self.held.is_set():
                    self.held.clear()
                    self._outage.failed(exc)
                    self._safe_forget()
            self._stop.wait(delay)
            delay = min(delay * 2, _MAX_DELAY)

    def _take(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(self._sql.session_lock, (self.key,)).fetchone()
        if not (row and row[0]):
            # Still held by this worker's previous session, which the server
            # has not yet seen die: try again shortly.
            return False
        conn.execute(self._sql.session_held, (self.key, self.worker_id))
        self.held.set()
        self._outage.succeeded()
        return True

    def _hold(self, conn: psycopg.Connection[Any]) -> None:
        """Wait until stopped or the connection dies (then raise psycopg.Error)."""
        probed = time.monotonic()
        while not self._stop.wait(_TICK):
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
            if readable or time.monotonic() - probed >= _PROBE_EVERY:
                conn.execute("SELECT 1")  # raises if the server ended the session
                probed = time.monotonic()
                self._outage.succeeded()

    def _safe_forget(self) -> None:
        try:
            self._forget()
        except Exception as exc:  # the server is away: the lease judges meanwhile
            log.debug("could not mark worker %s lease-only: %s", self.worker_id, exc)
