"""Writes whose connection drops mid-call: the store learns the outcome, never doubles it.

A real server cannot be told to lose one reply, so these tests wrap the pool's
connections: once armed, the next matching statement fails with
``OperationalError`` either before it reaches the server or after it committed
(its reply "lost"). Everything else runs against the real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from backrun.jobs import JobState
from tests.helpers import LEASE, T0, make_job
from tests.storage.postgres_support import postgres_store

pytestmark = pytest.mark.postgres


class Fault:
    """Which statement to break, and whether before or after it commits."""

    def __init__(self) -> None:
        self.marker: str | None = None
        self.after_commit = False
        self.fired = 0

    def arm(self, marker: str, *, after_commit: bool) -> None:
        self.marker, self.after_commit = marker, after_commit

    def hit(self, query: str) -> bool:
        if self.marker is not None and self.marker in query:
            self.marker = None
            self.fired += 1
            return True
        return False


class FaultyConnection:
    def __init__(self, real: psycopg.Connection[Any], fault: Fault) -> None:
        self._real = real
        self._fault = fault
        self._pending = False  # lose the reply when the open transaction commits

    def execute(self, query: str, params: Any = None) -> Any:
        if self._fault.hit(query):
            if not self._fault.after_commit:
                raise psycopg.OperationalError("simulated: connection dropped before sending")
            if self._real.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self._real.execute(query, params)  # autocommit: committed now
                raise psycopg.OperationalError("simulated: reply lost after commit")
            self._pending = True
        return self._real.execute(query, params)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._real.transaction() as tx:
            yield tx
        if self._pending:
            self._pending = False
            raise psycopg.OperationalError("simulated: reply lost after commit")


@pytest.fixture
def faulty() -> Iterator[tuple[Any, Fault]]:
    store: Any = postgres_store()
    fault = Fault()
    real_connection = store._db.pool.connection

    @contextmanager
    def connection(*args: Any, **kwargs: Any) -> Iterator[FaultyConnection]:
        with real_connection(*args, **kwargs) as conn:
            yield FaultyConnection(conn, fault)

    store._db.pool.connection = connection
    try:
        yield store, fault
    finally:
        store._db.pool.connection = real_connection
        store.close()


@pytest.mark.parametrize("after_commit", [False, True])
def test_an_add_lands_exactly_once(faulty: tuple[Any, Fault], after_commit: bool) -> None:
    store, fault = faulty
    job = make_job()
    fault.arm("INSERT INTO", after_commit=after_commit)
    store.add(job)
    assert fault.fired == 1
    assert store.find() == [job]


@pytest.mark.parametrize("after_commit", [False, True])
def test_an_update_lands_exactly_once(faulty: tuple[Any, Fault], after_commit: bool) -> None:
    store, fault = faulty
    store.add(make_job())
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    done = job.replace(state=JobState.SUCCEEDED, finished_at=T0)
    fault.arm("WITH u AS (UPDATE", after_commit=after_commit)
    store.update(done)
    assert fault.fired == 1
    assert store.get(job.id) == done


def test_a_claim_whose_reply_was_lost_still_hands_over_its_jobs(
    faulty: tuple[Any, Fault],
) -> None:
    store, fault = faulty
    jobs = [make_job() for _ in range(3)]
    store.add_many(jobs)
    fault.arm("WITH picked AS", after_commit=True)
    claimed = store.claim(queues=None, limit=2, now=T0, worker_id="w", lease=LEASE)
    assert fault.fired == 1
    assert len(claimed) == 2
    assert all(store.get(j.id) == j for j in claimed)
    rest = store.claim(queues=None, limit=5, now=T0, worker_id="w", lease=LEASE)
    assert {j.id for j in claimed + rest} == {j.id for j in jobs}


def test_a_claim_that_never_ran_takes_nothing(faulty: tuple[Any, Fault]) -> None:
    store, fault = faulty
    store.add(make_job())
    fault.arm("WITH picked AS", after_commit=False)
    assert store.claim(queues=None, limit=2, now=T0, worker_id="w", lease=LEASE) == []
    assert len(store.claim(queues=None, limit=2, now=T0, worker_id="w", lease=LEASE)) == 1


@pytest.mark.parametrize("after_commit", [False, True])
def test_a_requeue_lands_exactly_once(faulty: tuple[Any, Fault], after_commit: bool) -> None:
    store, fault = faulty
    store.add(make_job())
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    store.update(job.replace(state=JobState.DEAD, finished_at=T0))
    fault.arm("WITH u AS (UPDATE", after_commit=after_commit)
    later = T0 + timedelta(hours=1)
    again = store.requeue(job.id, now=later)
    assert fault.fired == 1
    assert (again.state, again.attempts, again.run_at) == (JobState.QUEUED, 0, later)
    assert store.get(job.id) == again


@pytest.mark.parametrize("after_commit", [False, True])
def test_a_cancel_lands_once(faulty: tuple[Any, Fault], after_commit: bool) -> None:
    store, fault = faulty
    job = make_job()
    store.add(job)
    fault.arm("'cancelled'", after_commit=after_commit)
    cancelled = store.cancel(job.id, now=T0)
    assert fault.fired == 1
    assert cancelled == job.replace(state=JobState.CANCELLED, finished_at=T0)
