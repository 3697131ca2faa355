"""The PostgreSQL store's connections: a pool, error translation, and retries that are safe.

Every driver failure becomes :class:`~backrun.errors.StorageError`. A dropped
connection is logged once per outage; the pool's other idle connections are
checked at once, so a retry gets a live one. Reads and idempotent writes are
retried once. A write that is not idempotent and whose connection dropped
mid-call may or may not have committed: :meth:`Connections.uncertain` asks the
database what happened before it retries, so nothing is applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from backrun.errors import StorageError

__all__ = ["RETRY", "Connections"]

log = logging.getLogger("backrun.storage.postgres")

RETRY: Any = object()
"""Returned by a resolver of :meth:`Connections.uncertain`: the write did not land."""

Run = Callable[[psycopg.Connection[Any]], Any]


class Connections:
    """A connection pool (owned, or the caller's) with the store's failure handling."""

    def __init__(
        self, dsn_or_pool: str | ConnectionPool[Any], *, schema: str, size: int, timeout: float
    ) -> None:
        self.schema = schema
        if isinstance(dsn_or_pool, str):
            self.pool: ConnectionPool[Any] = ConnectionPool(
                dsn_or_pool,
                min_size=1,
                max_size=size,
                kwargs={"autocommit": True},
                timeout=timeout,
                open=True,
                name=f"backrun-{schema}",
            )
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
        self._outage = False
        self._closed = False

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection; turn driver failures into StorageError."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise StorageError(
                f"backrun tables are missing in schema {self.schema!r}: run `backrun db init` "
                "or PostgresStorage.migrate()"
            ) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            self._note_outage(exc)
            raise StorageError(f"PostgreSQL is unreachable: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc
        if self._outage:
            self._outage = False
            log.warning("PostgreSQL connection restored (schema %s)", self.schema)

    def _note_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning("PostgreSQL connection lost (schema %s): %s", self.schema, exc)
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
