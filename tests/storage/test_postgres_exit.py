"""A process that used the PostgreSQL store exits promptly, closed or not.

psycopg's pool joins its threads from a finalizer if nobody closed it; on
Python 3.13 that waits 5 s per thread during interpreter shutdown, so a worker
or a script that forgot ``close()`` hung for tens of seconds at exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.storage.postgres_support import (
    drop_schema,
    postgres_dsn,
    require_postgres,
    unique_schema,
)

SCRIPT = textwrap.dedent(
    """
    import sys
    import backrun

    store = backrun.PostgresStorage(sys.argv[1], schema=sys.argv[2])
    store.migrate()
    engine = backrun.Engine(store, middleware=[], threads=3)

    @engine.handler(name="exit.noop")
    def noop(payload: dict) -> None:
        pass

    with engine.running():
        engine.enqueue("exit.noop", {})
        engine.run_until_idle(timeout=20)
    print("done", flush=True)
    # no engine.close(): the store must not make the exit wait
    """
)


def test_a_script_that_never_closes_the_store_exits_at_once() -> None:
    require_postgres()
    schema = unique_schema()
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, postgres_dsn(), schema],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert "done" in done.stdout
        assert "couldn't stop thread" not in done.stderr
        assert took < 15, f"exit took {took:.1f}s: {done.stderr[-500:]}"
    finally:
        drop_schema(schema)
