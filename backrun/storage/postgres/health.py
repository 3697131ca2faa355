"""How the PostgreSQL store reports its connection's health: one line per outage.

Every part of a store that talks to the server (the pool, the LISTEN thread,
the worker's session lock) reports its failures and successes to one
:class:`Outage`, which logs "connection lost" once when the first failure
arrives and "connection restored" once when things work again. psycopg_pool's
own per-connection warnings about the store's pool ("discarding broken
connection", "error connecting in ...") would repeat that news once per pooled
connection and per reconnection attempt, so :func:`quiet_pool_logs` demotes
them to DEBUG; pools a caller owns keep their normal logging.

:func:`permanent` tells a configuration error (no such database or role, a
rejected password, a malformed DSN), which retrying cannot fix, from a server
that is down or unreachable, which it can.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg

__all__ = ["Outage", "StoreConnection", "one_line", "permanent", "quiet_pool_logs"]

log = logging.getLogger("backrun.storage.postgres")

_SETTLE = 1.0  # seconds without a failure before an outage counts as over

# What libpq says when the server answered and refused this client for good.
# A refused TCP connection, a timeout, "the database system is starting up" or
# "too many clients" are worth retrying and are not listed.
_PERMANENT = (
    "does not exist",  # database "x" / role "x" does not exist
    "authentication failed",  # password / ident / peer authentication failed
    "no pg_hba.conf entry",
    "permission denied",
    "password is required",
    "no password supplied",
    "invalid connection option",
    "invalid sslmode",
)


def one_line(exc: BaseException) -> str:
    """The error's message on one line (libpq adds hints on separate lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def permanent(exc: BaseException) -> bool:
    """True if connecting failed for a reason retrying cannot fix.

    A malformed DSN raises :class:`psycopg.ProgrammingError`; a server that
    answers but refuses the database or role raises an ``OperationalError``
    without a SQLSTATE, so its message is what tells.
    """
    if isinstance(exc, psycopg.ProgrammingError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    message = str(exc)
    return "FATAL:" in message and any(marker in message for marker in _PERMANENT)


class Outage:
    """Logs a lost connection once per outage, and its end once.

    Args:
        schema: named in the log lines, so several stores can be told apart.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_failure = 0.0

    @property
    def down(self) -> bool:
        """True between a reported failure and the logged recovery."""
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        """A connection failed: log it if this starts an outage."""
        now = time.monotonic()
        with self._lock:
            self._last_failure = now
            if self._down_since is not None:
                return
            self._down_since = now
        what = "refused the connection" if permanent(exc) else "connection lost"
        log.warning("PostgreSQL %s (schema %s): %s", what, self.schema, one_line(exc))

    def succeeded(self) -> None:
        """A round trip worked: end the outage once no failure came for a moment.

        The settling moment keeps one outage one outage: after
        ``pg_terminate_backend`` each idle pooled connection only fails when
        next used, possibly after another part of the store has reconnected.
        """
        if self._down_since is None:
            return
        now = time.monotonic()
        with self._lock:
            since = self._down_since
            if since is None or now - self._last_failure < _SETTLE:
                return
            self._down_since = None
        log.warning(
            "PostgreSQL connection restored after %.1f s (schema %s)", now - since, self.schema
        )


class StoreConnection(psycopg.Connection[Any]):
    """A connection of a store's own pool; reports how each connect attempt ended.

    Each store subclasses it with its own :attr:`report`, so the store learns
    the real cause of a failed connect that happened in the pool's background
    thread.
    """

    report: ClassVar[Callable[[BaseException | None], None] | None] = None

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:
        """Connect like :meth:`psycopg.Connection.connect`, reporting the outcome."""
        try:
            conn = super().connect(*args, **kwargs)
        except psycopg.Error as exc:
            if cls.report is not None:
                cls.report(exc)
            raise
        if cls.report is not None:
            cls.report(None)
        return conn

    @classmethod
    def reporting_to(cls, report: Callable[[BaseException | None], None]) -> type[StoreConnection]:
        """A subclass whose connect attempts are reported to ``report``."""
        return type("StoreConnection", (cls,), {"report": staticmethod(report)})


_quiet_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_filter_lock = threading.Lock()
_filter_installed = False


class _QuietPoolFilter(logging.Filter):
    """Demotes psycopg_pool's records about the store's own pools to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote ``record`` if it is about a quiet pool; keep it only if DEBUG is on."""
        if record.levelno > logging.DEBUG and _about_quiet_pool(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _about_quiet_pool(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    names = {pool.name for pool in list(_quiet_pools)}
    for arg in args:
        if isinstance(arg, StoreConnection):
            return True
        if isinstance(arg, str) and arg in names:
            return True
        pool = getattr(arg, "pool", None)  # a pool maintenance task
        if callable(pool):  # held as a weak reference
            pool = pool()
        if pool is not None and pool in _quiet_pools:
            return True
    return False


def quiet_pool_logs(pool: Any) -> None:
    """Demote psycopg_pool's warnings about ``pool`` (and its connections) to DEBUG."""
    global _filter_installed
    with _filter_lock:
        _quiet_pools.add(pool)
        if not _filter_installed:
            logging.getLogger("psycopg.pool").addFilter(_QuietPoolFilter())
            _filter_installed = True
