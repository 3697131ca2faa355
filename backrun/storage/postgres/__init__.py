"""PostgreSQL storage: one jobs table shared by workers on many machines.

:class:`PostgresStorage` is a thin composition of parts, one module each:

- ``pool`` (connections, error translation, safe retries) and ``health``
  (one log line per outage);
- ``schema`` (migrations, advisory-lock keys), ``statements`` (every SQL
  statement) and ``rows`` (row <-> Job mapping);
- ``changes`` (enqueue, cancel, requeue, pause, purge), ``claims``,
  ``writes`` (owner writes) with ``results`` (success with follow-ups),
  ``queries`` (reads and counts);
- ``liveness`` (workers, heartbeats, orphans) with ``sessions`` (a worker's
  advisory lock on its own connection);
- ``notifications`` (the LISTEN thread), ``unique`` (unique keys) and
  ``limits`` (limited claims).

Importing this package imports psycopg; ``import backrun`` does not.
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'backrun[postgres]'"
    ) from exc

from .store import PostgresStorage

__all__ = ["PostgresStorage"]
