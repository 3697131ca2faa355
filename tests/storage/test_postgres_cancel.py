"""A cancel of a RUNNING job reaches every process's store at once (NOTIFY), and one query
tells a worker which of its jobs were cancelled."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backrun.jobs import JobState, new_job_id
from backrun.testing import wait_until
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


@pytest.fixture
def other(store: Any) -> Iterator[Any]:
    """A second store on the same schema: another process's view (its own connections)."""
    from backrun.storage.postgres import PostgresStorage

    storage = PostgresStorage(store._db.conninfo, schema=store.schema, pool_size=2)
    try:
        yield storage
    finally:
        storage.close()


def test_cancelling_a_running_job_wakes_the_owner_process_within_a_second(
    store: Any, other: Any
) -> None:
    job = make_job()
    store.add(job)
    [claimed] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    woken = threading.Event()
    store.subscribe(woken.set)
    wait_until(woken.is_set)  # the listener called back once on connecting
    time.sleep(0.3)  # no notification is pending: nothing else would wake it
    woken.clear()
    started = time.monotonic()
    cancelled = other.cancel(claimed.id, now=T0)
    assert (cancelled.state, cancelled.cancel_requested) == (JobState.RUNNING, True)
    assert woken.wait(1.0), "the owner's process was not told of the cancel"
    assert time.monotonic() - started < 1.0
    assert store.cancel_requests([claimed.id]) == {claimed.id}


def test_cancelling_a_finished_job_notifies_nobody(store: Any, other: Any) -> None:
    job = make_job()
    store.add(job)
    store.cancel(job.id, now=T0)  # QUEUED -> CANCELLED: nobody runs it
    woken = threading.Event()
    store.subscribe(woken.set)
    wait_until(woken.is_set)
    time.sleep(0.3)
    woken.clear()
    other.cancel(job.id, now=T0)  # already finished: unchanged
    assert not woken.wait(0.5)


def test_cancel_requests_names_only_running_jobs_with_a_cancel_requested(store: Any) -> None:
    running_cancelled, running, queued, finished = (make_job() for _ in range(4))
    store.add_many([running_cancelled, running])
    store.claim(queues=None, limit=2, now=T0, worker_id="w", lease=LEASE)
    store.add_many([queued, finished])
    store.cancel(running_cancelled.id, now=T0)
    store.cancel(finished.id, now=T0)  # queued -> cancelled: no longer running
    asked = [running_cancelled.id, running.id, queued.id, finished.id, new_job_id()]
    assert store.cancel_requests(asked) == {running_cancelled.id}
    assert store.cancel_requests(frozenset(asked)) == {running_cancelled.id}
    assert store.cancel_requests([]) == set()
    with pytest.raises(ValueError):
        store.cancel_requests(["../etc/passwd"])


def test_cancel_requests_is_one_query_for_many_ids(store: Any) -> None:
    jobs = [make_job() for _ in range(200)]
    store.add_many(jobs)
    store.claim(queues=None, limit=200, now=T0, worker_id="w", lease=LEASE)
    for job in jobs[::2]:
        store.cancel(job.id, now=T0)
    statements: list[str] = []
    real = store._db.retrying

    def counting(run: Any) -> Any:
        statements.append("call")
        return real(run)

    store._db.retrying = counting
    assert store.cancel_requests([j.id for j in jobs]) == {j.id for j in jobs[::2]}
    assert len(statements) == 1
