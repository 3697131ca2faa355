"""counts() is exact and never reads finished rows: O(waiting + running), not O(history)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from backrun.jobs import JobState
from tests.helpers import LEASE, T0, make_job
from tests.storage.postgres_support import postgres_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def store() -> Iterator[Any]:
    storage = postgres_store()
    try:
        yield storage
    finally:
        storage.close()


def sql(store: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with store._db.connect() as conn:
        cur = conn.execute(query.replace("{jobs}", f'"{store.schema}".jobs'), params)
        return cur.fetchall() if cur.description else []


def scanned(store: Any) -> dict[tuple[str, JobState], int]:
    """The truth, by a full scan."""
    rows = sql(store, "SELECT queue, state, count(*) FROM {jobs} GROUP BY queue, state")
    return {(queue, JobState(state)): n for queue, state, n in rows}


def insert_finished(store: Any, count: int, start: int = 1) -> None:
    sql(
        store,
        "INSERT INTO {jobs} (id, handler, queue, priority, state, attempts, max_attempts, "
        "run_at, finished_at, payload) SELECT lpad(to_hex(i), 32, '0'), 'x', "
        "CASE WHEN i %% 3 = 0 THEN 'mail' ELSE 'default' END, 0, "
        "CASE WHEN i %% 5 = 0 THEN 'dead' ELSE 'succeeded' END, 1, 4, %s, %s, '{}' "
        "FROM generate_series(%s::bigint, %s::bigint) AS i",
        (T0, T0, start, start + count - 1),
    )


def test_counts_stay_exact_through_every_state_change(store: Any) -> None:
    jobs = [make_job(queue="default") for _ in range(6)] + [
        make_job(queue="mail") for _ in range(4)
    ]
    store.add_many(jobs)
    claimed = store.claim(queues=None, limit=6, now=T0, worker_id="w", lease=LEASE)
    now = T0 + timedelta(seconds=1)
    store.update(claimed[0].replace(state=JobState.SUCCEEDED, finished_at=now))
    store.update(claimed[1].replace(state=JobState.DEAD, finished_at=now))
    store.update(claimed[2].replace(state=JobState.QUEUED, run_at=now))  # a retry
    assert store.counts() == scanned(store)
    waiting = [j for j in jobs if j.id not in {c.id for c in claimed}]
    store.cancel(waiting[0].id, now=now)  # QUEUED -> CANCELLED
    store.cancel(claimed[3].id, now=now)  # running: only requested
    store.requeue(claimed[1].id, now=now)  # DEAD -> QUEUED
    assert store.counts() == scanned(store)
    insert_finished(store, 1000)  # written by hand, behind the store's back
    assert store.counts() == scanned(store)
    assert store.purge(before=now + timedelta(days=1)) == 1000 + 2
    assert store.counts() == scanned(store)
    store.maintain(now=now)  # folds the finished-count deltas
    assert store.counts() == scanned(store)
    assert sql(store, f'SELECT count(*) FROM "{store.schema}".job_counts')[0][0] <= 4
    sql(store, "TRUNCATE {jobs}")
    assert store.counts() == {}


def rows_read(plan: dict[str, Any]) -> int:
    """Rows a plan node and its children read from the jobs table."""
    own = 0
    if plan.get("Relation Name") == "jobs":
        own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
        own += int(plan.get("Rows Removed by Filter", 0))
        own += int(plan.get("Rows Removed by Index Recheck", 0))
    return own + sum(rows_read(child) for child in plan.get("Plans", []))


def test_counts_reads_no_finished_row(store: Any) -> None:
    insert_finished(store, 100_000)
    sql(store, "ANALYZE {jobs}")
    store.add_many([make_job() for _ in range(30)])
    store.claim(queues=None, limit=10, now=T0, worker_id="w", lease=LEASE)
    with store._db.connect() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
        [(plan,)] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + store._sql.counts).fetchall()
    assert rows_read(plan[0]["Plan"]) <= 30
    counts = store.counts()
    assert counts[("default", JobState.QUEUED)] == 20
    assert counts[("default", JobState.RUNNING)] == 10
    assert counts[("mail", JobState.SUCCEEDED)] + counts[("default", JobState.DEAD)] > 0
    assert counts == scanned(store)


def test_counts_stay_exact_under_concurrent_finishes_and_compactions(store: Any) -> None:
    store.add_many([make_job(queue="default" if i % 2 else "mail") for i in range(160)])
    done = threading.Event()
    errors: list[BaseException] = []

    def finisher() -> None:
        try:
            while jobs := store.claim(queues=None, limit=3, now=T0, worker_id="w", lease=LEASE):
                for n, job in enumerate(jobs):
                    state = JobState.DEAD if n == 1 else JobState.SUCCEEDED
                    store.update(job.replace(state=state, finished_at=T0))
        except BaseException as exc:
            errors.append(exc)

    def compactor() -> None:
        try:
            while not done.is_set():
                store.maintain(now=T0)
        except BaseException as exc:
            errors.append(exc)

    finishers = [threading.Thread(target=finisher) for _ in range(3)]
    compactors = [threading.Thread(target=compactor) for _ in range(2)]
    for thread in finishers + compactors:
        thread.start()
    for thread in finishers:
        thread.join(60)
    done.set()
    for thread in compactors:
        thread.join(60)
    assert errors == []
    counts = store.counts()
    assert sum(counts.values()) == 160
    assert counts == scanned(store)
