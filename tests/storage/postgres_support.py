"""PostgreSQL test helpers: a store on a fresh schema that is dropped when it closes.

The server is read from ``BACKRUN_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When no server answers, the
helpers return ``None`` / skip, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import functools
import os
import secrets
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from backrun.storage.postgres import PostgresStorage

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_dsn() -> str:
    """The DSN tests use."""
    return os.environ.get("BACKRUN_TEST_POSTGRES_DSN", DEFAULT_DSN)


@functools.cache
def postgres_available() -> bool:
    """True when psycopg is installed and the server answers (checked once per process)."""
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(postgres_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is absent; fail under ``CI=true``."""
    if postgres_available():
        return
    reason = f"PostgreSQL is not reachable at {postgres_dsn()} (BACKRUN_TEST_POSTGRES_DSN)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def unique_schema() -> str:
    """A schema name no other test (or test process) uses."""
    return f"backrun_test_{os.getpid()}_{secrets.token_hex(4)}"


def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fresh_postgres_storage(**options: Any) -> PostgresStorage | None:
    """Return a migrated ``PostgresStorage`` on a new schema, or ``None`` without a server.

    Closing the store drops its schema. Its connections carry the schema name as
    ``application_name`` (see :func:`terminate_backends`).
    """
    if not postgres_available():
        return None
    from backrun.storage.postgres import PostgresStorage

    class _DroppingStorage(PostgresStorage):
        def close(self) -> None:
            super().close()
            drop_schema(self.schema)

    options.setdefault("pool_size", 4)
    schema = unique_schema()
    store = _DroppingStorage(tagged_dsn(schema), schema=schema, **options)
    store.migrate()
    return store


def tagged_dsn(application_name: str) -> str:
    """The test DSN with ``application_name`` set, so a test can find its connections."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(postgres_dsn(), application_name=application_name)


def terminate_backends(application_name: str) -> int:
    """Kill the server connections that set ``application_name``; return how many."""
    import psycopg

    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        row = conn.execute(query, (application_name,)).fetchone()
    return int(row[0]) if row else 0


def postgres_store(**options: Any) -> PostgresStorage:
    """Like :func:`fresh_postgres_storage`, but skip (or fail in CI) without a server."""
    require_postgres()
    store = fresh_postgres_storage(**options)
    assert store is not None
    return store
