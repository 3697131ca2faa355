"""PostgreSQL's own side of unique keys and limits: key rows of purged jobs, the lock order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from backrun.jobs import JobState
from backrun.limits import HandlerLimits
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


def key_rows(store: Any) -> list[tuple[str, str]]:
    with store._db.connect() as conn:
        rows = conn.execute(f'SELECT handler, key FROM "{store.schema}".unique_keys').fetchall()
    return sorted((h, k) for h, k in rows)


def test_maintain_deletes_the_key_rows_of_purged_jobs_only(store: Any) -> None:
    done = make_job(handler="h", unique_key="done")
    waiting = make_job(handler="h", unique_key="waiting")
    store.add_unique([done, waiting], now=T0)
    (running,) = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    assert running.id == done.id
    store.update(running.replace(state=JobState.SUCCEEDED, finished_at=T0))
    store.maintain(now=T0)
    assert key_rows(store) == [("h", "done"), ("h", "waiting")]
    store.maintain(now=T0 + store.retention + timedelta(seconds=1))  # purges the finished job
    assert store.get(done.id) is None
    assert key_rows(store) == [("h", "waiting")]
    again = make_job(handler="h", unique_key="done")
    assert store.add_unique([again], now=T0) == [again]


def test_a_limited_claim_skips_held_groups_in_one_transaction(store: Any) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    jobs = [
        make_job(
            handler="lim", limited=True, concurrency_key="a", run_at=T0 - timedelta(seconds=3)
        ),
        make_job(
            handler="lim", limited=True, concurrency_key="a", run_at=T0 - timedelta(seconds=2)
        ),
        make_job(
            handler="lim", limited=True, concurrency_key="b", run_at=T0 - timedelta(seconds=1)
        ),
    ]
    store.add_many(jobs)

    def claim() -> list[str]:
        got = store.claim_limited(
            queues=None, limit=1, now=T0, worker_id="w", lease=LEASE, limits=one
        )
        return [job.id for job in got.jobs]

    assert claim() == [jobs[0].id]
    assert claim() == [jobs[2].id]  # group "a" is full: skipped, "b" is next
    assert claim() == []
