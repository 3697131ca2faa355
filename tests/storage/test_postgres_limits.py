"""PostgreSQL's own side of unique keys and limits: key rows of purged jobs, the lock order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from backrun.jobs import Job, JobState
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


def test_a_unique_enqueue_joins_the_callers_transaction(store: Any) -> None:
    import psycopg

    from tests.storage.postgres_support import postgres_dsn

    dropped = make_job(handler="h", unique_key="k")
    with psycopg.connect(postgres_dsn()) as conn:
        with conn.transaction(force_rollback=True):
            assert store.add_unique([dropped], now=T0, connection=conn) == [dropped]
        assert store.get(dropped.id) is None
        assert key_rows(store) == []  # the key went with the rollback
        kept = make_job(handler="h", unique_key="k")
        racer: list[Job] = []
        finished = threading.Event()

        def race() -> None:
            racer.extend(store.add_unique([make_job(handler="h", unique_key="k")], now=T0))
            finished.set()

        with conn.transaction():
            assert store.add_unique([kept], now=T0, connection=conn) == [kept]
            thread = threading.Thread(target=race)
            thread.start()
            # The racer waits on the key's lock until this transaction ends.
            assert not finished.wait(0.3)
        thread.join(timeout=10)
    assert [job.id for job in racer] == [kept.id]
    assert store.get(kept.id) is not None


def test_engine_enqueue_with_a_key_joins_the_callers_transaction(store: Any) -> None:
    import psycopg
    from pydantic import BaseModel

    import backrun
    from tests.storage.postgres_support import postgres_dsn

    class Note(BaseModel):
        text: str

    engine = backrun.Engine(store, middleware=[])

    @engine.handler(name="tests.note")
    def note(payload: Note) -> None:
        return None

    with psycopg.connect(postgres_dsn()) as conn, conn.transaction():
        first = engine.enqueue(note, {"text": "a"}, unique_key="n", connection=conn)
        again = engine.enqueue(note, {"text": "b"}, unique_key="n", connection=conn)
        batch = engine.enqueue_many(
            note, [{"text": "c"}, {"text": "d"}], unique_key=lambda p: p["text"], connection=conn
        )
    assert again.id == first.id
    assert len({job.id for job in batch}) == 2
    assert engine.enqueue(note, {"text": "e"}, unique_key="n").id == first.id
