"""The storage contract for unique jobs (``add_unique``) and limits (``claim_limited``).

Every backend runs these: memory, JSON files and PostgreSQL. Times are T0 plus
offsets (the ``now`` each call is given), never the wall clock.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from backrun.jobs import Job, JobState
from backrun.limits import CONCURRENCY, RATE, HandlerLimits, RateLimit
from backrun.storage.base import Storage
from tests.helpers import LEASE, T0, make_job, wait_until


def keyed(key: str, *, handler: str = "tests.noop", **changes: object) -> Job:
    return make_job(handler=handler, unique_key=key, **changes)


def claim(storage: Storage, *, now: object = T0) -> Job:
    (job,) = storage.claim(queues=None, limit=1, now=now, worker_id="w-test", lease=LEASE)  # type: ignore[arg-type]
    return job


def finish(storage: Storage, job: Job, state: JobState = JobState.SUCCEEDED) -> Job:
    done = job.replace(state=state, finished_at=T0, lease_expires_at=None)
    storage.update(done)
    return done


# -- unique jobs ---------------------------------------------------------------------


def test_stores_declare_both_abilities(storage: Storage) -> None:
    assert storage.capabilities.unique_jobs
    assert storage.capabilities.limits


def test_a_waiting_job_holds_its_key_and_is_returned_in_place_of_the_new_one(
    storage: Storage,
) -> None:
    first = keyed("invoice:42")
    assert storage.add_unique([first], now=T0) == [first]
    second = keyed("invoice:42")
    (got,) = storage.add_unique([second], now=T0)
    assert got.id == first.id
    assert storage.get(second.id) is None


def test_a_batch_is_deduplicated_against_itself_and_the_store(storage: Storage) -> None:
    stored = keyed("a")
    storage.add_unique([stored], now=T0)
    batch = [keyed("a"), keyed("b"), make_job(), keyed("b"), keyed("c")]
    got = storage.add_unique(batch, now=T0)
    assert [j.id for j in got] == [stored.id, batch[1].id, batch[2].id, batch[1].id, batch[4].id]
    assert storage.get(batch[0].id) is None
    assert storage.get(batch[3].id) is None
    assert {j.id for j in storage.find(limit=100)} == {stored.id, *(batch[i].id for i in (1, 2, 4))}


def test_a_running_job_holds_its_key(storage: Storage) -> None:
    storage.add_unique([keyed("k")], now=T0)
    running = claim(storage)
    assert storage.add_unique([keyed("k")], now=T0)[0].id == running.id


@pytest.mark.parametrize(
    "state", [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED], ids=lambda s: s.value
)
def test_a_finished_job_frees_its_key(storage: Storage, state: JobState) -> None:
    first = keyed("k")
    storage.add_unique([first], now=T0)
    if state is JobState.CANCELLED:
        storage.cancel(first.id, now=T0)
    else:
        finish(storage, claim(storage), state)
    again = keyed("k")
    assert storage.add_unique([again], now=T0) == [again]
    assert storage.get(again.id) is not None


def test_unique_until_keeps_the_key_after_the_job_finished(storage: Storage) -> None:
    first = keyed("k", unique_until=T0 + timedelta(hours=1))
    storage.add_unique([first], now=T0)
    finish(storage, claim(storage))
    assert storage.add_unique([keyed("k")], now=T0 + timedelta(minutes=59))[0].id == first.id
    later = keyed("k")
    assert storage.add_unique([later], now=T0 + timedelta(hours=1)) == [later]


def test_a_newcomers_unique_for_covers_jobs_created_within_it(storage: Storage) -> None:
    first = keyed("k")  # enqueued without unique_for
    storage.add_unique([first], now=T0)
    finish(storage, claim(storage))
    late = T0 + timedelta(minutes=30)
    hour = keyed("k", at=late, unique_until=late + timedelta(hours=1))
    assert storage.add_unique([hour], now=late)[0].id == first.id
    minute = keyed("k", at=late, unique_until=late + timedelta(minutes=1))
    assert storage.add_unique([minute], now=late) == [minute]


def test_keys_are_per_handler(storage: Storage) -> None:
    a = keyed("k", handler="h.a")
    b = keyed("k", handler="h.b")
    assert storage.add_unique([a], now=T0) == [a]
    assert storage.add_unique([b], now=T0) == [b]


def test_requeue_of_a_dead_job_is_not_blocked_by_its_key(storage: Storage) -> None:
    first = keyed("k")
    storage.add_unique([first], now=T0)
    finish(storage, claim(storage), JobState.DEAD)
    requeued = storage.requeue(first.id, now=T0)
    assert requeued.state is JobState.QUEUED
    assert storage.add_unique([keyed("k")], now=T0)[0].id == first.id  # it holds it again


def test_a_refused_batch_stores_nothing_and_takes_no_key(storage: Storage) -> None:
    existing = make_job()
    storage.add(existing)
    with pytest.raises(ValueError):
        storage.add_unique([keyed("k"), existing], now=T0)
    fresh = keyed("k")
    assert storage.add_unique([fresh], now=T0) == [fresh]
    assert len(storage.find(limit=10)) == 2


def test_racing_threads_store_one_job_and_all_get_it(storage: Storage) -> None:
    threads = 12
    barrier = threading.Barrier(threads)
    got: list[str] = []
    lock = threading.Lock()

    def enqueue() -> None:
        job = keyed("race")
        barrier.wait()
        (winner,) = storage.add_unique([job], now=T0)
        with lock:
            got.append(winner.id)

    workers = [threading.Thread(target=enqueue) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=30)
    assert len(got) == threads
    assert len(set(got)) == 1
    assert [j.id for j in storage.find(limit=100)] == got[:1]


# -- limited claims ---------------------------------------------------------------------


def limited(handler: str = "lim", **changes: object) -> Job:
    return make_job(handler=handler, limited=True, **changes)


def claim_limited(storage: Storage, limits: dict[str, HandlerLimits], *, now: object = T0):  # type: ignore[no-untyped-def]
    return storage.claim_limited(
        queues=None,
        limit=1,
        now=now,  # type: ignore[arg-type]
        worker_id="w-test",
        lease=LEASE,
        limits=limits,
    )


TWO = {"lim": HandlerLimits(max_concurrency=2)}


def test_a_full_limit_skips_its_job_and_the_next_eligible_one_is_claimed(
    storage: Storage,
) -> None:
    jobs = [limited(run_at=T0 - timedelta(seconds=10 - i)) for i in range(3)]
    free = make_job(handler="free")
    storage.add_many([*jobs, free])
    assert claim_limited(storage, TWO).jobs[0].id == jobs[0].id
    assert claim_limited(storage, TWO).jobs[0].id == jobs[1].id
    third = claim_limited(storage, TWO)
    assert [j.id for j in third.jobs] == [free.id]  # no head-of-line blocking
    assert (jobs[2].id, "lim", CONCURRENCY) in third.waiting
    empty = claim_limited(storage, TWO)
    assert empty.jobs == []
    waiting = storage.get(jobs[2].id)
    assert waiting is not None
    assert waiting.state is JobState.QUEUED
    assert waiting.attempts == 0  # a wait never charges an attempt


def test_a_finish_frees_the_slot(storage: Storage) -> None:
    storage.add_many([limited(), limited(), limited()])
    first = claim_limited(storage, TWO).jobs[0]
    claim_limited(storage, TWO)
    assert claim_limited(storage, TWO).jobs == []
    finish(storage, first)
    assert len(claim_limited(storage, TWO).jobs) == 1


def test_an_orphans_rescue_frees_its_slot(storage: Storage) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    storage.add_many([limited(run_at=T0 - timedelta(seconds=1)), limited()])
    orphan = claim_limited(storage, one).jobs[0]
    assert claim_limited(storage, one).jobs == []
    # What supervisor.rescue_orphan writes: back to QUEUED under the orphan's token.
    storage.update(orphan.replace(state=JobState.QUEUED, attempts=0, worker_id=None))
    assert len(claim_limited(storage, one).jobs) == 1


def test_a_release_back_to_queued_frees_the_slot_too(storage: Storage) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    storage.add_many([limited()])
    job = claim_limited(storage, one).jobs[0]
    storage.update(job.replace(state=JobState.QUEUED, attempts=0))
    again = claim_limited(storage, one).jobs
    assert [j.id for j in again] == [job.id]


def test_a_concurrency_key_limits_each_key_apart(storage: Storage) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    storage.add_many(
        [limited(concurrency_key=t, run_at=T0 - timedelta(seconds=i)) for i, t in enumerate("aabb")]
    )
    got = [claim_limited(storage, one).jobs for _ in range(3)]
    assert sorted(j[0].concurrency_key or "" for j in got if j) == ["a", "b"]
    assert got[2] == []


def test_jobs_not_marked_limited_are_not_limited(storage: Storage) -> None:
    storage.add_many([make_job(handler="lim") for _ in range(3)])
    assert all(len(claim_limited(storage, TWO).jobs) == 1 for _ in range(3))


def test_a_rate_limit_counts_starts_in_a_sliding_window(storage: Storage) -> None:
    rate = {"lim": HandlerLimits(rate_limit=RateLimit(2, per=timedelta(seconds=10)))}
    storage.add_many([limited(run_at=T0 - timedelta(seconds=5 - i)) for i in range(5)])
    assert len(claim_limited(storage, rate, now=T0).jobs) == 1
    assert len(claim_limited(storage, rate, now=T0 + timedelta(seconds=4)).jobs) == 1
    held = claim_limited(storage, rate, now=T0 + timedelta(seconds=9))
    assert held.jobs == []
    assert sorted(w[2] for w in held.waiting) == [RATE] * 3  # every waiting job
    assert held.retry_at == T0 + timedelta(seconds=10)
    assert len(claim_limited(storage, rate, now=T0 + timedelta(seconds=10)).jobs) == 1
    assert claim_limited(storage, rate, now=T0 + timedelta(seconds=13)).jobs == []
    assert len(claim_limited(storage, rate, now=T0 + timedelta(seconds=14)).jobs) == 1


def test_a_freed_slot_calls_the_subscribers(storage: Storage) -> None:
    one = {"lim": HandlerLimits(max_concurrency=1)}
    storage.add_many([limited(), limited()])
    job = claim_limited(storage, one).jobs[0]
    woken = threading.Event()
    unsubscribe = storage.subscribe(woken.set)
    try:
        wait_until(lambda: claim_limited(storage, one).jobs == [], what="the limit to hold")
        woken.clear()
        finish(storage, job)
        wait_until(woken.is_set, 10, what="a notification for the freed slot")
    finally:
        unsubscribe()
