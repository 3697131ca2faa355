"""The storage contract for results, follow-ups, progress and payload versions, on every backend.

A success's result and its ``then=`` follow-ups land in the one write that
records it; a follow-up already present is not added twice; other outcomes
add none; progress is an owner's write that changes nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState, Progress, new_job_id
from backrun.storage.base import Storage
from tests.helpers import LEASE, T0, make_job


def claim_one(storage: Storage) -> Job:
    (job,) = storage.claim(queues=None, limit=1, now=T0, worker_id="w-test", lease=LEASE)
    return job


def followup(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "tests.next",
        "payload": {"to": "a@b.c"},
        "queue": "mail",
        "priority": 3,
        "delay": 0.0,
        "max_attempts": 2,
        "headers": {},
        "version": 2,
    }
    item.update(changes)
    return item


def test_new_fields_round_trip(storage: Storage) -> None:
    job = make_job(
        result={"ignored": "until it succeeds"},
        progress=Progress(3, 10, "tiles"),
        version=4,
        followups=(followup(),),
    )
    storage.add(job)
    assert storage.get(job.id) == job


@pytest.mark.parametrize(
    "result", [{"url": "x", "n": [1, 2.5]}, [1, "a", None], 7, 0, "text", None, True]
)
def test_the_result_is_stored_with_the_success(storage: Storage, result: Any) -> None:
    storage.add(make_job())
    job = claim_one(storage)
    done = job.replace(state=JobState.SUCCEEDED, finished_at=T0, result=result)
    storage.update(done)
    stored = storage.get(job.id)
    assert stored is not None
    assert stored.state is JobState.SUCCEEDED
    assert stored.result == result


def test_a_success_enqueues_its_followups_in_the_same_write(storage: Storage) -> None:
    now = T0 + timedelta(seconds=5)
    first, later = followup(), followup(delay=60.0, queue="slow", priority=-1)
    storage.add(make_job(followups=(first, later)))
    job = claim_one(storage)
    assert storage.get(first["id"]) is None  # not before the success
    storage.update(job.replace(state=JobState.SUCCEEDED, finished_at=now))
    a, b = storage.get(first["id"]), storage.get(later["id"])
    assert a is not None
    assert b is not None
    assert (a.state, a.run_at, a.queue, a.priority) == (JobState.QUEUED, now, "mail", 3)
    assert (a.handler, a.payload, a.max_attempts, a.version) == (
        "tests.next",
        first["payload"],
        2,
        2,
    )
    assert a.attempts == 0
    assert a.created_at == now
    assert (b.state, b.run_at, b.queue, b.priority) == (
        JobState.SCHEDULED,
        now + timedelta(seconds=60),
        "slow",
        -1,
    )
    # Due follow-ups are claimable like any job.
    claimed = storage.claim(queues=["mail"], limit=5, now=now, worker_id="w2", lease=LEASE)
    assert [j.id for j in claimed] == [first["id"]]


@pytest.mark.parametrize("state", [JobState.DEAD, JobState.CANCELLED, JobState.SCHEDULED])
def test_other_outcomes_enqueue_no_followups(storage: Storage, state: JobState) -> None:
    item = followup()
    storage.add(make_job(followups=(item,)))
    job = claim_one(storage)
    finished = None if state is JobState.SCHEDULED else T0
    run_at = T0 + timedelta(seconds=30) if state is JobState.SCHEDULED else job.run_at
    storage.update(job.replace(state=state, finished_at=finished, run_at=run_at))
    assert storage.get(item["id"]) is None


def test_a_followup_that_exists_already_is_not_added_twice(storage: Storage) -> None:
    item = followup()
    # As an earlier attempt of the parent may have left it (JSON store, killed
    # between creating the follow-ups and publishing the success).
    storage.add(make_job(id=item["id"], handler="tests.next", payload={"first": True}))
    parent = make_job(followups=(item,), priority=100)
    storage.add(parent)
    job = claim_one(storage)
    assert job.id == parent.id
    storage.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    existing = storage.get(item["id"])
    assert existing is not None
    assert existing.payload == {"first": True}
    assert len(storage.find(limit=100)) == 2


def test_progress_is_an_owner_write_that_changes_nothing_else(storage: Storage) -> None:
    storage.add(make_job())
    job = claim_one(storage)
    storage.record_progress(job, Progress(1, 4, "one"))
    storage.record_progress(job, Progress(2.5, None, None))
    stored = storage.get(job.id)
    assert stored is not None
    if stored.progress is None:  # a store may keep progress only with the outcome
        assert type(storage).record_progress is Storage.record_progress
    else:
        assert stored.progress == Progress(2.5, None, None)
        assert stored.replace(progress=None, lease_expires_at=None) == job.replace(
            lease_expires_at=None
        )
    stale = job.replace(claim_token="0" * 16)
    with pytest.raises(LeaseLost):
        storage.record_progress(stale, Progress(3))
    storage.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0, progress=Progress(4, 4)))
    with pytest.raises(LeaseLost):
        storage.record_progress(job, Progress(5))
    final = storage.get(job.id)
    assert final is not None
    assert final.progress == Progress(4, 4)


def test_a_record_written_before_these_fields_still_loads() -> None:
    from backrun.serialization import job_from_dict, job_to_dict

    job = make_job(result=[1], progress=Progress(1, 2, "x"), version=3, followups=(followup(),))
    old = job_to_dict(job)
    for key in ("result", "progress", "version", "followups"):
        del old[key]
    loaded = job_from_dict(old)
    assert (loaded.result, loaded.progress, loaded.version, loaded.followups) == (None, None, 1, ())
    assert job_from_dict(job_to_dict(job)) == job
    with pytest.raises(ValueError, match="followups"):
        job_from_dict({**job_to_dict(job), "followups": "nope"})
    with pytest.raises(ValueError, match="progress"):
        job_from_dict({**job_to_dict(job), "progress": [1, 2]})
