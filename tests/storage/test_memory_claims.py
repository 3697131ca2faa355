"""The memory store's ready heaps: claims in (priority, run_at, id) order, stale entries skipped."""

from __future__ import annotations

from datetime import timedelta

from backrun.jobs import Job, JobState
from backrun.limits import LimitedClaim
from backrun.storage.memory import MemoryStorage, _plain_claim
from tests.helpers import LEASE, T0, make_job


def _claim_all(store: MemoryStorage, queues: list[str] | None = None) -> list[str]:
    claimed: list[str] = []
    while jobs := store.claim(
        queues=queues, limit=1, now=T0 + timedelta(hours=1), worker_id="w", lease=LEASE
    ):
        claimed.extend(job.id for job in jobs)
    return claimed


def test_claims_follow_priority_then_run_at_then_id_across_queues() -> None:
    store = MemoryStorage()
    second = timedelta(seconds=1)
    jobs = [
        make_job(id="2" * 32, queue="a", priority=-3),
        make_job(id="1" * 32, queue="b", priority=5, run_at=T0 + second),
        make_job(id="3" * 32, queue="a", priority=5, run_at=T0 + second),
        make_job(id="4" * 32, queue="b", priority=5),
        make_job(id="0" * 32, queue="a"),
    ]
    for job in jobs:
        store.add(job)
    assert _claim_all(store) == ["4" * 32, "1" * 32, "3" * 32, "0" * 32, "2" * 32]


def test_a_job_indexed_again_in_its_place_is_claimed_once() -> None:
    store = MemoryStorage()
    first, second, gone = make_job(), make_job(), make_job()
    for job in (first, second, gone):
        store.add(job)
    store.claim(queues=None, limit=0, now=T0, worker_id="w", lease=LEASE)  # all in the ready heap
    store.cancel(first.id, now=T0)
    store.requeue(first.id, now=T0)  # the same key again; its first copy is stale
    store.cancel(gone.id, now=T0)
    assert _claim_all(store) == sorted([first.id, second.id])


def test_a_job_given_back_in_its_place_is_claimed_again_once() -> None:
    store = MemoryStorage()
    job = make_job()
    store.add(job)
    [claimed] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    store.update(claimed.replace(state=JobState.QUEUED, attempts=0, started_at=None))
    assert _claim_all(store) == [job.id]
    assert _claim_all(store, ["default"]) == []


def test_next_run_at_reads_the_live_ready_head() -> None:
    store = MemoryStorage()
    first, second = make_job(run_at=T0), make_job(run_at=T0 + timedelta(seconds=1))
    store.add(first)
    store.add(second)
    store.claim(queues=None, limit=0, now=T0 + timedelta(hours=1), worker_id="w", lease=LEASE)
    store.cancel(first.id, now=T0)
    assert store.next_run_at(queues=None) == second.run_at


def test_a_plain_claim_equals_its_dataclass_form() -> None:
    jobs: list[Job] = [make_job()]
    assert _plain_claim(jobs) == LimitedClaim(jobs)
    assert _plain_claim(jobs).waiting is not _plain_claim(jobs).waiting
