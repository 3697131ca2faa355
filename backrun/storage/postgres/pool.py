"""The PostgreSQL store's connections: a pool, error translation, and retries that are safe.

Every driver failure becomes :class:`~backrun.errors.StorageError`. A dropped
connection is logged once per outage (see :mod:`backrun.storage.postgres.health`); the pool's
other idle connections are checked at once, so a retry gets a live one. A
configuration error (malformed DSN, no such database or role, a rejected
password) fails the call at once with libpq's own message; only a server that
is down or unreachable is waited for, up to ``timeout``. Reads and idempotent writes are
retried once. A write that is not idempotent and whose connection dropped
mid-call may or may not have committed: :meth:`Connections.uncertain` asks the
database what happened before it retries, so nothing is applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from backrun.errors import StorageError

from .health import Outage, StoreConnection, one_line, permanent, quiet_pool_logs

__all__ = ["RETRY", "Connections"]

log = logging.getLogger("backrun.storage.postgres")

_SLICE = 0.05  # seconds between looks at the pool's connect errors while waiting

RETRY: Any = object()
"""Returned by a resolver of :meth:`Connections.uncertain`: the write did not land."""

Run = Callable[[psycopg.Connection[Any]], Any]


class Connections:
    """A connection pool (owned, or the caller's) with the store's failure handling."""

    def __init__(
        self, dsn_or_pool: str | ConnectionPool[Any], *, schema: str, size: int, timeout: float
    ) -> None:
        self.schema = schema
        self.timeout = timeout
        self.outage = Outage(schema)
        self._connect_lock = threading.Lock()
        self._connect_error: BaseException | None = None  # the pool's last failed connect
        self._connected_once = False
        if isinstance(dsn_or_pool, str):
            try:
                conninfo_to_dict(dsn_or_pool)
            except psycopg.Error as exc:
                raise StorageError(f"invalid PostgreSQL DSN: {one_line(exc)}") from exc
            self.pool: ConnectionPool[Any] = ConnectionPool(
                dsn_or_pool,
                min_size=1,
                max_size=size,
                kwargs={"autocommit": True},
                timeout=timeout,
                open=False,
                name=f"backrun-{schema}",
                connection_class=StoreConnection.reporting_to(self._connect_result),
            )
            quiet_pool_logs(self.pool)
            self.pool.open(wait=False)
            self.owned = True
            self.conninfo = dsn_or_pool
            self.connect_kwargs: dict[str, Any] = {}
        else:
            self.pool = dsn_or_pool
            self.owned = False
            # The listener opens its own connection like the caller's pool would
            # (psycopg_pool >= 3.3 accepts callables for both settings).
            conninfo, kwargs = dsn_or_pool.conninfo, dsn_or_pool.kwargs
            self.conninfo = str(conninfo() if callable(conninfo) else conninfo)
            kwargs = kwargs() if callable(kwargs) else kwargs
            self.connect_kwargs = {k: v for k, v in (kwargs or {}).items() if k != "autocommit"}
        self._closed = False

    def _connect_result(self, exc: BaseException | None) -> None:
        """Called by the pool's connection class after each connect attempt."""
        with self._connect_lock:
            self._connect_error = exc
            if exc is None:
                self._connected_once = True
        if exc is not None:
            self.outage.failed(exc)

    def _refused(self) -> BaseException | None:
        """The pool's last connect error, if retrying cannot fix it."""
        error = self._connect_error
        return error if error is not None and permanent(error) else None

    @contextmanager
    def _borrow(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; fails at once when the pool's connects are refused for good."""
        if not self.owned or (self._connected_once and self._connect_error is None):
            with self.pool.connection() as conn:
                yield conn
            return
        # The pool cannot connect (or has not yet): wait in slices, so that a
        # refusal seen by the pool's background connect ends the wait at once.
        deadline = time.monotonic() + self.timeout
        while True:
            refused = self._refused()
            if refused is not None:
                raise StorageError(
                    f"PostgreSQL refused the connection: {one_line(refused)}"
                ) from refused
            remaining = deadline - time.monotonic()
            try:
                conn = self.pool.getconn(timeout=max(min(remaining, _SLICE), 0.001))
            except PoolTimeout:
                if remaining <= _SLICE:
                    raise
                continue
            break
        try:
            yield conn
        finally:
            self.pool.putconn(conn)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection; turn driver failures into StorageError."""
        try:
            with self._borrow() as conn:
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise StorageError(
                f"backrun tables are missing in schema {self.schema!r}: run `backrun db init` "
                "or PostgresStorage.migrate()"
            ) from exc
        except PoolTimeout as exc:
            cause = self._connect_error or self._probe()
            if cause is None:
                raise StorageError(
                    f"no free PostgreSQL connection within {self.timeout:g} s: "
                    "every pooled connection is in use"
                ) from exc
            self._note_outage(cause)
            raise StorageError(f"PostgreSQL is unreachable: {one_line(cause)}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._note_outage(exc)
            raise StorageError(f"PostgreSQL is unreachable: {one_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL error: {one_line(exc)}") from exc
        self.outage.succeeded()

    def _probe(self) -> BaseException | None:
        """Connect once outside the pool to learn why it gives no connection."""
        conninfo = self.pool.conninfo
        kwargs = self.pool.kwargs
        try:
            conninfo = conninfo() if callable(conninfo) else conninfo
            kwargs = dict((kwargs() if callable(kwargs) else kwargs) or {})
            kwargs["connect_timeout"] = max(1, min(int(self.timeout), 5))
            with psycopg.connect(str(conninfo), **kwargs):
                return None
        except psycopg.Error as exc:
            return exc
        except Exception:  # a caller's conninfo callable; the timeout says enough
            log.debug("connection probe failed", exc_info=True)
            return None

    def _note_outage(self, exc: BaseException) -> None:
        self.outage.failed(exc)
        if not self._closed:
            # Drop every idle connection the server has closed, so the caller's
            # retry gets a live one instead of failing once per pooled connection.
            try:
                self.pool.check()
            except Exception:
                log.debug("pool check failed", exc_info=True)

    def retrying(self, run: Run) -> Any:
        """Run an idempotent operation, once more on a fresh connection if the first drops."""
        try:
            with self.connect() as conn:
                return run(conn)
        except StorageError as exc:
            if not dropped(exc):
                raise
        with self.connect() as conn:
            return run(conn)

    def uncertain(self, write: Run, resolve: Run) -> Any:
        """Run a write; if its connection drops, learn from ``resolve`` whether it landed.

        ``resolve`` runs on a fresh connection and returns the write's result
        when the write committed, or :data:`RETRY` when it did not; the write is
        then run once more.
        """
        try:
            with self.connect() as conn:
                return write(conn)
        except StorageError as exc:
            if not dropped(exc):
                raise
        outcome = self.retrying(resolve)
        if outcome is not RETRY:
            return outcome
        with self.connect() as conn:
            return write(conn)

    def close(self) -> None:
        """Close the pool if this object opened it. Idempotent."""
        self._closed = True
        if self.owned:
            self.pool.close()


def dropped(exc: StorageError) -> bool:
    """True if ``exc`` reports a lost connection (the operation's outcome is unknown)."""
    cause = exc.__cause__
    return isinstance(cause, psycopg.OperationalError) and not isinstance(cause, PoolTimeout)
