"""The storage contract for ``update_and_claim``: a slot's completion and its next claim."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState
from backrun.limits import CONCURRENCY, HandlerLimits, LimitedClaim
from backrun.storage.base import Storage
from backrun.storage.memory import MemoryStorage
from tests.helpers import LEASE, T0, make_job

NOW = T0 + timedelta(seconds=1)


def claim_one(storage: Storage) -> Job:
    [job] = storage.claim(queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE)
    return job


def done(job: Job) -> Job:
    return job.replace(state=JobState.SUCCEEDED, finished_at=NOW, lease_expires_at=None)


def update_and_claim(storage: Storage, record: Job, **kw: Any) -> LimitedClaim:
    kw.setdefault("queues", None)
    kw.setdefault("limit", 1)
    return storage.update_and_claim(record, now=NOW, worker_id="w-test", lease=LEASE, **kw)


def test_the_completion_is_written_and_the_next_jobs_are_claimed_in_order(
    storage: Storage,
) -> None:
    first = make_job(priority=9)
    later = [make_job(run_at=T0 - timedelta(seconds=5 - i)) for i in range(3)]
    storage.add_many([first, *later])
    running = claim_one(storage)
    assert running.id == first.id
    claimed = update_and_claim(storage, done(running), limit=2)
    assert storage.get(first.id) == done(running)
    assert [j.id for j in claimed.jobs] == [later[0].id, later[1].id]
    for job in claimed.jobs:
        assert job.state is JobState.RUNNING
        assert job.attempts == 1
        assert job.worker_id == "w-test"
        assert job.started_at == NOW
        assert storage.get(job.id) == job
    assert storage.get(later[2].id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_a_lost_claim_writes_nothing_and_claims_nothing(storage: Storage) -> None:
    storage.add_many([make_job(), make_job()])
    running = claim_one(storage)
    with pytest.raises(LeaseLost):
        update_and_claim(storage, done(running).replace(claim_token="not-the-token"))
    assert storage.get(running.id) == running
    assert len(storage.find(state=JobState.QUEUED)) == 1


def test_the_claim_honours_queues_and_an_empty_store(storage: Storage) -> None:
    storage.add_many([make_job(), make_job(queue="other")])
    running = claim_one(storage)
    assert update_and_claim(storage, done(running), queues=["nothing"]).jobs == []
    again = claim_one(storage)
    assert update_and_claim(storage, done(again)).jobs == []


def test_a_finish_frees_its_limit_slot_for_the_claim_it_makes(storage: Storage) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    first, second = make_job(handler="lim", limited=True), make_job(handler="lim", limited=True)
    storage.add_many([first, second])
    [running] = storage.claim_limited(
        queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE, limits=one
    ).jobs
    held = storage.claim_limited(
        queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE, limits=one
    )
    assert held.jobs == []
    assert (second.id, "lim", CONCURRENCY) in held.waiting
    claimed = update_and_claim(storage, done(running), limits=one)
    assert [j.id for j in claimed.jobs] == [second.id]


def test_a_memory_subclass_that_observes_updates_sees_this_write_too() -> None:
    writes: list[Job] = []

    class Recording(MemoryStorage):
        def update(self, job: Job) -> None:
            writes.append(job)
            super().update(job)

    storage = Recording()
    storage.add_many([make_job(), make_job()])
    running = claim_one(storage)
    claimed = update_and_claim(storage, done(running))
    assert writes == [done(running)]
    assert len(claimed.jobs) == 1
