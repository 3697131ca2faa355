"""The storage contract (backrun/storage/base.py), run against every backend.

Times are explicit (a fixed epoch plus offsets), never the wall clock.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest

from backrun.errors import JobNotFound, LeaseLost
from backrun.jobs import Job, JobError, JobState, new_job_id
from backrun.storage.base import Storage
from tests.storage.factories import LEASE, T0, make_job


def claim(storage: Storage, *, now: datetime = T0, limit: int = 10, **kw: Any) -> list[Job]:
    kw.setdefault("worker_id", "w-test")
    kw.setdefault("queues", None)
    return storage.claim(limit=limit, now=now, lease=LEASE, **kw)


def claim_one(storage: Storage, **kw: Any) -> Job:
    jobs = claim(storage, limit=1, **kw)
    assert len(jobs) == 1
    return jobs[0]


# -- add / get ---------------------------------------------------------------


def test_add_then_get_round_trips_every_field(storage: Storage) -> None:
    error = JobError("ValueError", "bad", "Traceback...", 1, T0)
    job = make_job(
        queue="mail",
        priority=7,
        max_attempts=9,
        errors=(error,),
        headers={"traceparent": "00-abc-def-01"},
        payload={"to": "a@b.c", "nested": {"list": [1, 2.5, "x", None, True]}},
        run_alone=True,
    )
    storage.add(job)
    assert storage.get(job.id) == job


def test_get_unknown_is_none_and_malformed_id_is_refused(storage: Storage) -> None:
    assert storage.get(new_job_id()) is None
    for hostile in ("../etc/passwd", "/abs/path", "a\x00b", "x" * 300, ""):
        with pytest.raises(ValueError, match="job id"):
            storage.get(hostile)


def test_add_refuses_a_duplicate_id(storage: Storage) -> None:
    job = make_job()
    storage.add(job)
    with pytest.raises(ValueError, match="exists"):
        storage.add(job.replace(payload={"other": True}))
    stored = storage.get(job.id)
    assert stored is not None
    assert stored.payload == {"n": 1}


def test_add_many_stores_every_job(storage: Storage) -> None:
    jobs = [make_job(payload={"i": i}) for i in range(25)]
    storage.add_many(jobs)
    assert [storage.get(j.id) for j in jobs] == jobs


# -- claim -----------------------------------------------------------------


def test_claim_stamps_the_claim(storage: Storage) -> None:
    job = make_job(attempts=2, max_attempts=5)
    storage.add(job)
    now = T0 + timedelta(seconds=5)
    (claimed,) = claim(storage, now=now, worker_id="w-1")
    assert claimed.id == job.id
    assert claimed.state is JobState.RUNNING
    assert claimed.attempts == 3
    assert claimed.worker_id == "w-1"
    assert claimed.started_at == now
    assert claimed.lease_expires_at == now + LEASE
    assert claimed.claim_token
    assert storage.get(job.id) == claimed


def test_claim_takes_only_due_jobs(storage: Storage) -> None:
    due = make_job()
    later = make_job(run_at=T0 + timedelta(hours=1))
    storage.add(due)
    storage.add(later)
    assert [j.id for j in claim(storage)] == [due.id]
    assert claim(storage, now=T0 + timedelta(minutes=59)) == []
    assert [j.id for j in claim(storage, now=T0 + timedelta(hours=1))] == [later.id]


def test_claim_order_is_priority_then_run_at_then_id(storage: Storage) -> None:
    low_early = make_job(priority=0, run_at=T0 - timedelta(minutes=5))
    high_late = make_job(priority=5, run_at=T0 - timedelta(minutes=1))
    high_early = make_job(priority=5, run_at=T0 - timedelta(minutes=2))
    low_late_a = make_job(priority=0, run_at=T0)
    low_late_b = make_job(priority=0, run_at=T0)
    future_high = make_job(priority=99, run_at=T0 + timedelta(minutes=1))
    for job in (low_late_b, future_high, low_early, high_late, low_late_a, high_early):
        storage.add(job)
    order = [claim_one(storage).id for _ in range(5)]
    assert order == [high_early.id, high_late.id, low_early.id, low_late_a.id, low_late_b.id]
    assert claim(storage) == []


def test_claim_respects_limit_and_queues(storage: Storage) -> None:
    mail = [make_job(queue="mail") for _ in range(3)]
    reports = [make_job(queue="reports") for _ in range(2)]
    storage.add_many(mail + reports)
    first = claim(storage, limit=2, queues=["mail"])
    assert len(first) == 2
    assert {j.queue for j in first} == {"mail"}
    rest = claim(storage, limit=10, queues=["mail", "nothing-here"])
    assert [j.id for j in rest] == [j.id for j in mail if j.id not in {f.id for f in first}]
    assert {j.id for j in claim(storage, queues=None)} == {j.id for j in reports}


def test_each_job_is_claimed_by_exactly_one_of_many_threads(storage: Storage) -> None:
    jobs = [make_job(payload={"i": i}) for i in range(200)]
    storage.add_many(jobs)
    taken: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def take(slot: int) -> None:
        barrier.wait()
        while batch := claim(storage, limit=3, worker_id=f"w-{slot}"):
            taken[slot].extend(j.id for j in batch)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    flat = [job_id for ids in taken for job_id in ids]
    assert sorted(flat) == sorted(j.id for j in jobs)


def test_a_claimed_job_is_not_claimed_again(storage: Storage) -> None:
    storage.add(make_job())
    claim_one(storage)
    assert claim(storage, now=T0 + timedelta(days=1)) == []


# -- update ------------------------------------------------------------------


def test_owner_finishes_a_job_once(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    done = running.replace(state=JobState.SUCCEEDED, finished_at=T0 + timedelta(seconds=1))
    storage.update(done)
    assert storage.get(running.id) == done
    with pytest.raises(LeaseLost):
        storage.update(done)
    assert storage.get(running.id) == done


def test_a_stale_token_is_refused_and_changes_nothing(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    forged = running.replace(claim_token="not-the-token", state=JobState.SUCCEEDED)
    with pytest.raises(LeaseLost):
        storage.update(forged)
    assert storage.get(running.id) == running


def test_update_of_an_unclaimed_job_is_refused(storage: Storage) -> None:
    job = make_job()
    storage.add(job)
    with pytest.raises(LeaseLost):
        storage.update(job.replace(state=JobState.SUCCEEDED, claim_token="t"))
    assert storage.get(job.id) == job


def test_a_retry_is_claimable_again_at_its_run_at_under_a_new_token(storage: Storage) -> None:
    storage.add(make_job())
    first = claim_one(storage)
    error = JobError("ValueError", "boom", "tb", 1, T0)
    retry_at = T0 + timedelta(seconds=30)
    storage.update(first.replace(state=JobState.SCHEDULED, run_at=retry_at, errors=(error,)))
    assert claim(storage, now=T0 + timedelta(seconds=29)) == []
    assert storage.next_run_at(queues=None) == retry_at
    second = claim_one(storage, now=retry_at)
    assert second.attempts == 2
    assert second.errors == (error,)
    assert second.claim_token != first.claim_token
    with pytest.raises(LeaseLost):
        storage.update(first.replace(state=JobState.SUCCEEDED))


def test_a_released_job_is_claimable_at_once(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    storage.update(running.replace(state=JobState.QUEUED, attempts=0, lease_expires_at=None))
    again = claim_one(storage, now=T0 + timedelta(seconds=1))
    assert again.attempts == 1


def test_owner_may_rewrite_a_running_job(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    later = running.replace(lease_expires_at=T0 + timedelta(minutes=10))
    storage.update(later)
    stored = storage.get(running.id)
    assert stored is not None
    assert stored.lease_expires_at == later.lease_expires_at
    storage.update(later.replace(state=JobState.SUCCEEDED, finished_at=T0))


# -- heartbeat, cancel, requeue ---------------------------------------------


def test_heartbeat_extends_leases_and_reports_cancellations(storage: Storage) -> None:
    storage.register_worker("w-test", now=T0)
    storage.add_many([make_job(), make_job()])
    keep, stop = claim(storage, limit=2)
    storage.cancel(stop.id, now=T0)
    until = T0 + timedelta(minutes=5)
    assert storage.heartbeat([keep, stop], worker_id="w-test", now=T0, lease_until=until) == {
        stop.id
    }
    stored = storage.get(keep.id)
    assert stored is not None
    assert stored.lease_expires_at == until
    assert stored.state is JobState.RUNNING


def test_heartbeat_reports_claims_lost_to_someone_else(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    storage.update(running.replace(state=JobState.QUEUED, attempts=0))
    claim_one(storage, worker_id="w-other")
    lost = storage.heartbeat(
        [running], worker_id="w-test", now=T0, lease_until=T0 + timedelta(minutes=1)
    )
    assert lost == {running.id}


def test_cancel_a_waiting_job(storage: Storage) -> None:
    queued = make_job()
    delayed = make_job(run_at=T0 + timedelta(hours=1))
    storage.add_many([queued, delayed])
    for job in (queued, delayed):
        cancelled = storage.cancel(job.id, now=T0)
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.finished_at == T0
        assert storage.get(job.id) == cancelled
    assert claim(storage, now=T0 + timedelta(days=1)) == []


def test_cancel_a_running_job_asks_its_owner(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    answer = storage.cancel(running.id, now=T0)
    assert answer.state is JobState.RUNNING
    assert answer.cancel_requested
    storage.update(running.replace(state=JobState.CANCELLED, finished_at=T0))
    stored = storage.get(running.id)
    assert stored is not None
    assert stored.state is JobState.CANCELLED


def test_cancel_of_a_finished_job_changes_nothing_and_unknown_raises(storage: Storage) -> None:
    storage.add(make_job())
    running = claim_one(storage)
    done = running.replace(state=JobState.SUCCEEDED, finished_at=T0)
    storage.update(done)
    assert storage.cancel(done.id, now=T0) == done
    with pytest.raises(JobNotFound):
        storage.cancel(new_job_id(), now=T0)


def test_requeue_of_a_dead_job_keeps_its_history(storage: Storage) -> None:
    storage.add(make_job(max_attempts=1))
    running = claim_one(storage)
    error = JobError("ValueError", "boom", "tb", 1, T0)
    storage.update(running.replace(state=JobState.DEAD, errors=(error,), finished_at=T0))
    now = T0 + timedelta(hours=2)
    again = storage.requeue(running.id, now=now)
    assert again.state is JobState.QUEUED
    assert again.attempts == 0
    assert again.run_at == now
    assert again.finished_at is None
    assert again.errors == (error,)
    assert claim_one(storage, now=now).id == running.id


def test_requeue_of_a_scheduled_job_makes_it_due_now(storage: Storage) -> None:
    job = make_job(run_at=T0 + timedelta(days=1))
    storage.add(job)
    storage.requeue(job.id, now=T0)
    assert claim_one(storage).id == job.id


def test_requeue_refuses_live_and_succeeded_jobs(storage: Storage) -> None:
    queued = make_job()
    storage.add(queued)
    with pytest.raises(ValueError, match="queued"):
        storage.requeue(queued.id, now=T0)
    running = claim_one(storage)
    with pytest.raises(ValueError, match="running"):
        storage.requeue(running.id, now=T0)
    storage.update(running.replace(state=JobState.SUCCEEDED, finished_at=T0))
    with pytest.raises(ValueError, match="succeeded"):
        storage.requeue(running.id, now=T0)
    with pytest.raises(JobNotFound):
        storage.requeue(new_job_id(), now=T0)


# -- queries -------------------------------------------------------------------


def test_find_filters_and_orders_by_id(storage: Storage) -> None:
    jobs = [make_job(queue="a" if i % 2 else "b") for i in range(6)]
    storage.add_many(jobs)
    claim(storage, limit=1)  # the oldest b job is now RUNNING
    assert [j.id for j in storage.find()] == [j.id for j in jobs]
    assert [j.id for j in storage.find(queue="a")] == [j.id for j in jobs if j.queue == "a"]
    queued_b = storage.find(queue="b", state=JobState.QUEUED)
    assert [j.id for j in queued_b] == [jobs[2].id, jobs[4].id]
    assert len(storage.find(limit=4)) == 4


def test_counts_by_queue_and_state(storage: Storage) -> None:
    storage.add_many([make_job(queue="a"), make_job(queue="a"), make_job(queue="b")])
    storage.add(make_job(queue="b", run_at=T0 + timedelta(hours=1)))
    claim(storage, limit=1, queues=["a"])
    counts = storage.counts()
    assert {k: v for k, v in counts.items() if v} == {
        ("a", JobState.RUNNING): 1,
        ("a", JobState.QUEUED): 1,
        ("b", JobState.QUEUED): 1,
        ("b", JobState.SCHEDULED): 1,
    }


def test_next_run_at_and_oldest_due(storage: Storage) -> None:
    assert storage.next_run_at(queues=None) is None
    storage.add(make_job(queue="a", run_at=T0 + timedelta(minutes=10)))
    storage.add(make_job(queue="b", run_at=T0 + timedelta(minutes=3)))
    assert storage.next_run_at(queues=None) == T0 + timedelta(minutes=3)
    assert storage.next_run_at(queues=["a"]) == T0 + timedelta(minutes=10)
    assert storage.next_run_at(queues=["c"]) is None
    storage.add(make_job(queue="a", run_at=T0 - timedelta(minutes=2)))
    assert storage.next_run_at(queues=["a"]) == T0 - timedelta(minutes=2)
    assert storage.oldest_due(now=T0) == {"a": T0 - timedelta(minutes=2)}
    assert storage.oldest_due(now=T0 + timedelta(minutes=5)) == {
        "a": T0 - timedelta(minutes=2),
        "b": T0 + timedelta(minutes=3),
    }


# -- workers, orphans, purge --------------------------------------------------


def test_jobs_of_a_live_worker_are_never_orphans(storage: Storage) -> None:
    storage.register_worker("w-live", now=T0)
    storage.add(make_job())
    claim_one(storage, worker_id="w-live")
    assert storage.orphans(now=T0 + timedelta(days=30)) == []


def test_jobs_of_an_unknown_or_stopped_worker_are_orphans(storage: Storage) -> None:
    storage.add_many([make_job(), make_job()])
    ghost_job = claim_one(storage, worker_id="w-ghost")
    storage.register_worker("w-gone", now=T0)
    gone_job = claim_one(storage, worker_id="w-gone")
    storage.unregister_worker("w-gone")
    orphans = storage.orphans(now=T0 + LEASE * 10)
    assert {o.id for o in orphans} == {ghost_job.id, gone_job.id}
    rescued = orphans[0].replace(state=JobState.QUEUED, run_at=T0 + LEASE * 10)
    storage.update(rescued)
    with pytest.raises(LeaseLost):
        storage.update(orphans[0].replace(state=JobState.DEAD))
    assert {o.id for o in storage.orphans(now=T0 + LEASE * 10)} == {orphans[1].id}


def test_purge_deletes_only_old_finished_jobs(storage: Storage) -> None:
    storage.add_many([make_job(), make_job(), make_job()])
    old, recent, running = claim(storage, limit=3)
    storage.update(old.replace(state=JobState.SUCCEEDED, finished_at=T0))
    storage.update(recent.replace(state=JobState.DEAD, finished_at=T0 + timedelta(days=2)))
    waiting = make_job()
    storage.add(waiting)
    assert storage.purge(before=T0 + timedelta(days=1)) == 1
    assert storage.get(old.id) is None
    assert storage.get(recent.id) is not None
    assert storage.get(running.id) is not None
    assert storage.get(waiting.id) is not None
    assert storage.purge(before=T0 + timedelta(days=3), states=[JobState.SUCCEEDED]) == 0
    assert storage.purge(before=T0 + timedelta(days=3), states=[JobState.DEAD]) == 1


# -- cancel across processes, rescued orphans -----------------------------------


def second_view(storage: Storage) -> Storage:
    """Another handle on the same store, as another process would open it."""
    from backrun.storage.memory import MemoryStorage

    if isinstance(storage, MemoryStorage):
        return storage  # one process: the store itself is the only view
    from backrun.storage.jsonfile import JsonFileStorage

    if isinstance(storage, JsonFileStorage):
        return JsonFileStorage(storage.path, fsync=False)
    from backrun.storage.postgres import PostgresStorage
    from tests.storage.postgres_support import postgres_dsn

    assert isinstance(storage, PostgresStorage)
    return PostgresStorage(postgres_dsn(), schema=storage.schema, pool_size=2)


def test_a_cancel_from_another_view_reaches_cancel_requests(storage: Storage) -> None:
    running, waiting = make_job(), make_job(run_at=T0 + timedelta(hours=1))
    storage.add_many([running, waiting])
    claimed = claim_one(storage)
    assert storage.cancel_requests([claimed.id, waiting.id]) == set()
    other = second_view(storage)
    try:
        other.cancel(claimed.id, now=T0)
        other.cancel(waiting.id, now=T0)  # not running: cancelled at once, nothing to stop
    finally:
        if other is not storage:
            other.close()
    asked = [claimed.id, waiting.id, new_job_id()]
    assert storage.cancel_requests(asked) == {claimed.id}
    assert storage.cancel_requests([]) == set()


def test_a_rescued_orphan_keeps_its_place_ahead_of_later_jobs(storage: Storage) -> None:
    from backrun.supervisor import rescue_orphan

    early = make_job()
    storage.add(early)
    orphaned = claim_one(storage, worker_id="w-dead")  # never registered: gone
    later = [make_job(run_at=T0 + timedelta(seconds=s), created_at=T0) for s in (1, 2, 3)]
    storage.add_many(later)
    now = T0 + timedelta(seconds=10)
    (orphan,) = storage.orphans(now=now)
    assert orphan.id == orphaned.id
    storage.update(rescue_orphan(orphan, now=now, max_crashes=3))
    first = claim_one(storage, now=now, worker_id="w-live")
    assert first.id == early.id
    assert first.run_at == T0
    assert first.run_alone  # it crashed beside others: it now runs alone
    assert first.attempts == 1  # the uncharged crash gave its attempt back
    assert [j.id for j in claim(storage, now=now, worker_id="w-live")] == [j.id for j in later]
