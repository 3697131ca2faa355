"""Connecting: configuration errors fail at once with libpq's cause; outages log one line each."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel

import backrun
from backrun.errors import StorageError
from backrun.jobs import JobState
from backrun.testing import wait_until
from tests.storage.postgres_support import (
    postgres_dsn,
    postgres_store,
    require_postgres,
    terminate_backends,
)

pytestmark = pytest.mark.postgres


class Item(BaseModel):
    n: int = 0


def _first_call(dsn: str, timeout: float = 5.0) -> tuple[StorageError, float]:
    from backrun.storage.postgres import PostgresStorage

    started = time.monotonic()
    store = None
    try:
        store = PostgresStorage(dsn, timeout=timeout, pool_size=1)
        store.counts()
    except StorageError as exc:
        return exc, time.monotonic() - started
    finally:
        if store is not None:
            store.close()
    raise AssertionError("no StorageError")


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"dbname": "backrun_no_such_database"}, 'database "backrun_no_such_database" does not'),
        ({"user": "backrun_no_such_role"}, 'role "backrun_no_such_role" does not exist'),
    ],
)
def test_a_wrong_database_or_role_fails_at_once_with_the_real_cause(
    change: dict[str, str], cause: str
) -> None:
    require_postgres()
    error, elapsed = _first_call(make_conninfo(postgres_dsn(), **change))
    assert elapsed < 2.0  # not the 5 s connection timeout
    assert cause in str(error)
    assert "unreachable" not in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("dsn", "cause"),
    [
        ("host=127.0.0.1 dbname", 'missing "=" after "dbname"'),
        ("postgresql://postgres@127.0.0.1/test?bogus=1", "invalid URI query parameter"),
    ],
)
def test_a_malformed_dsn_fails_at_construction(dsn: str, cause: str) -> None:
    error, elapsed = _first_call(dsn)
    assert elapsed < 0.5
    assert str(error).startswith("invalid PostgreSQL DSN: ")
    assert cause in str(error)
    assert "\n" not in str(error)


def test_a_refused_server_is_waited_for_then_reported_with_its_cause() -> None:
    error, elapsed = _first_call("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    assert elapsed >= 0.9  # worth retrying: the server may be starting
    assert "unreachable" in str(error)
    assert "refused" in str(error).lower()


def test_terminated_backends_log_one_line_per_outage_and_one_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = postgres_store(pool_size=6, poll_interval=0.2)
    engine = backrun.Engine(
        store,
        threads=4,
        lease=timedelta(seconds=30),
        recovery_interval=0.2,
        middleware=[],
    )
    gate = threading.Event()

    @engine.handler(name="connect.item")
    def item(payload: Item) -> None:
        gate.wait(0.05)

    def succeeded() -> int:
        return store.counts().get(("default", JobState.SUCCEEDED), 0)

    caplog.set_level(logging.INFO)
    try:
        with engine.running():
            engine.enqueue_many(item, [{"n": n} for n in range(40)])
            wait_until(lambda: succeeded() == 40, timeout=30)  # the pool has grown
            caplog.clear()
            assert terminate_backends(store.schema) >= 3
            engine.enqueue_many(item, [{"n": n} for n in range(40, 80)])
            wait_until(lambda: succeeded() == 80, timeout=30)
            wait_until(lambda: "connection restored" in caplog.text, timeout=10)
            time.sleep(0.3)  # let stragglers of the same outage log, if they would
    finally:
        engine.close()
    noisy = [
        (r.name, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("backrun", "psycopg"))
    ]
    assert len(noisy) == 2, "\n".join(f"{name}: {message}" for name, message in noisy)
    assert "PostgreSQL connection lost" in noisy[0][1]
    assert "PostgreSQL connection restored" in noisy[1][1]
