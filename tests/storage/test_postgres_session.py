"""A worker's session lock: a dead session frees its jobs after the grace; a live worker
that lost its lock connection is judged by its lease, never by the free lock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backrun.jobs import Job, JobState, new_job_id
from backrun.testing import wait_until
from tests.storage.postgres_support import postgres_store, terminate_backends

pytestmark = pytest.mark.postgres

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)
GRACE = timedelta(seconds=0.3)


@pytest.fixture
def store() -> Iterator[Any]:
    storage = postgres_store(session_grace=GRACE)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture
def scanner(store: Any) -> Iterator[Any]:
    """Another process's store on the same schema, scanning for orphans."""
    from backrun.storage.postgres import PostgresStorage

    storage = PostgresStorage(
        store._db.conninfo, schema=store.schema, pool_size=2, session_grace=GRACE
    )
    try:
        yield storage
    finally:
        storage.close()


def running_job(store: Any, worker: str) -> Job:
    job = Job(id=new_job_id(), handler="t", payload={}, run_at=T0, created_at=T0)
    store.add(job)
    store.register_worker(worker, now=T0)
    [claimed] = store.claim(queues=None, limit=1, now=T0, worker_id=worker, lease=LEASE)
    return claimed


def watch_no_orphans(scanner: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert scanner.orphans(now=T0) == []
        time.sleep(0.02)


def test_a_live_worker_is_never_an_orphan_however_often_it_is_scanned(
    store: Any, scanner: Any
) -> None:
    running_job(store, "w-live")
    watch_no_orphans(scanner, 4 * GRACE.total_seconds())


def test_a_worker_whose_session_ended_is_an_orphan_after_the_grace(
    store: Any, scanner: Any
) -> None:
    job = running_job(store, "w-dead")
    store._liveness.sessions.pop("w-dead").stop()  # its session ends; its row stays: a crash
    started = time.monotonic()
    wait_until(lambda: [o.id for o in scanner.orphans(now=T0)] == [job.id], timeout=10)
    assert time.monotonic() - started >= GRACE.total_seconds()
    assert scanner.get(job.id).state is JobState.RUNNING  # the caller rescues it


def test_a_live_worker_that_cannot_retake_its_lock_is_judged_by_its_lease(
    store: Any, scanner: Any
) -> None:
    running_job(store, "w-cut")
    session = store._liveness.sessions["w-cut"]
    session._conninfo = "postgresql://postgres@127.0.0.1:1/test"  # reconnects are refused
    assert terminate_backends(store.schema) >= 1  # its lock is free; its pool reconnects
    wait_until(lambda: not session.held.is_set(), timeout=10)
    watch_no_orphans(scanner, 4 * GRACE.total_seconds())
    [(key,)] = scanner._db.retrying(
        lambda conn: conn.execute(
            f'SELECT session_key FROM "{store.schema}".workers WHERE id = %s', ("w-cut",)
        ).fetchall()
    )
    assert key is None  # lease-only until the lock is back


def test_a_worker_that_retakes_its_lock_is_tracked_again(store: Any, scanner: Any) -> None:
    running_job(store, "w-back")
    session = store._liveness.sessions["w-back"]
    for _ in range(3):
        assert terminate_backends(store.schema) >= 1
        wait_until(session.held.is_set, timeout=10)
        watch_no_orphans(scanner, 0.1)
    watch_no_orphans(scanner, 3 * GRACE.total_seconds())


def test_unregistering_releases_the_lock_and_a_negative_grace_is_refused(store: Any) -> None:
    from backrun.storage.postgres import PostgresStorage

    running_job(store, "w-gone")
    store.unregister_worker("w-gone")
    assert "w-gone" not in store._liveness.sessions
    with pytest.raises(ValueError):
        PostgresStorage(store._db.conninfo, schema=store.schema, session_grace=timedelta(-1))
