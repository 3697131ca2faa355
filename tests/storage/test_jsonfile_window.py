"""The JSON store's bounded ready window: a backlog bigger than the window behaves the same.

Each test runs the same jobs through a JSON store with a tiny window and
through the memory store (the reference), and compares what they answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from backrun.jobs import Job, JobState
from backrun.storage.base import Storage
from backrun.storage.jsonfile import JsonFileStorage, window
from backrun.storage.memory import MemoryStorage
from tests.helpers import LEASE, T0, make_job


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[JsonFileStorage, MemoryStorage]]:
    saved = (
        window.RELIST_MIN_S,
        window.RELIST_COST_FACTOR,
        window.RACY_NS,
    )
    # Re-list whenever a window rule says so (no rate limit), and only then
    # (no listing is "racy"): the rules alone must make the answers exact.
    window.RELIST_MIN_S = window.RELIST_COST_FACTOR = 0
    window.RACY_NS = 0
    store = JsonFileStorage(tmp_path / "s", fsync=False, ready_window=3)
    try:
        yield store, MemoryStorage()
    finally:
        store.close()
        (
            window.RELIST_MIN_S,
            window.RELIST_COST_FACTOR,
            window.RACY_NS,
        ) = saved


def mixed_jobs(n: int, seed: int) -> list[Job]:
    """Jobs of several priorities, due now or within the next two minutes (all in ready/)."""
    rnd = random.Random(seed)
    return [
        make_job(
            priority=rnd.choice([-5, 0, 0, 3, 10]),
            run_at=T0 + timedelta(seconds=rnd.choice([0, 0, 0, 15, 40, 90])),
            created_at=T0,
        )
        for _ in range(n)
    ]


def claim_ids(store: Storage, now_s: float, limit: int = 1) -> list[str]:
    jobs = store.claim(
        queues=None, limit=limit, now=T0 + timedelta(seconds=now_s), worker_id="w", lease=LEASE
    )
    return [job.id for job in jobs]


@pytest.mark.parametrize("seed", range(6))
def test_claim_order_is_exact_with_a_backlog_beyond_the_window(
    pair: tuple[JsonFileStorage, MemoryStorage], seed: int
) -> None:
    json_store, reference = pair
    jobs = mixed_jobs(40, seed)
    for store in pair:
        store.add_many(jobs[:25])
    rnd = random.Random(seed)
    now = 0.0
    claimed = 0
    rest = jobs[25:]
    while claimed < len(jobs):
        assert now < 10_000, "the stores stopped handing out jobs"
        if claimed >= 10 and rest:
            for store in pair:  # this store's own adds land among hidden names
                store.add_many(rest)
            rest = []
        now += rnd.choice([0.0, 0.0, 5.0, 20.0])
        limit = rnd.choice([1, 1, 2, 5])
        got, want = claim_ids(json_store, now, limit), claim_ids(reference, now, limit)
        assert got == want, (now, claimed)
        claimed += len(got)
        if not got:
            now += 30.0
    assert json_store.counts() == reference.counts()


def test_counts_find_and_get_see_jobs_outside_the_window(
    pair: tuple[JsonFileStorage, MemoryStorage],
) -> None:
    json_store = pair[0]
    jobs = mixed_jobs(30, 99)
    json_store.add_many(jobs)
    fresh = JsonFileStorage(json_store.path, fsync=False, ready_window=3)  # lists, knows no names
    try:
        assert fresh.counts() == {
            ("default", JobState.QUEUED): sum(j.state is JobState.QUEUED for j in jobs),
            ("default", JobState.SCHEDULED): sum(j.state is JobState.SCHEDULED for j in jobs),
        }
        assert [j.id for j in fresh.find(limit=100)] == sorted(j.id for j in jobs)
        for job in jobs:
            found = fresh.get(job.id)
            assert found is not None
            assert (found.id, found.state) == (job.id, job.state)
        last = max(jobs, key=lambda j: (-j.priority, j.run_at, j.id))
        with pytest.raises(ValueError, match="exists already"):
            fresh.add(last.replace(priority=-9))  # a hidden id, under another name
        cancelled = fresh.cancel(last.id, now=T0)
        assert cancelled.state is JobState.CANCELLED
        assert fresh.next_run_at(queues=None) == T0
        assert fresh.oldest_due(now=T0) == {"default": T0}
    finally:
        fresh.close()


def test_the_window_holds_at_most_its_size_after_a_listing(tmp_path: Path) -> None:
    writer = JsonFileStorage(tmp_path / "s", fsync=False)
    writer.add_many([make_job() for _ in range(200)])
    writer.close()
    store = JsonFileStorage(tmp_path / "s", fsync=False, ready_window=16)
    try:
        (taken,) = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
        (cache,) = store.ctx.caches.values()
        assert len(cache.live) <= 16
        assert not cache.complete
        assert cache.counts() == {JobState.QUEUED: 199, JobState.SCHEDULED: 0}
        rest = store.claim(queues=None, limit=500, now=T0, worker_id="w", lease=LEASE)
        assert len(rest) == 199
        assert taken.id not in {j.id for j in rest}
        assert len(cache.live) <= 16
    finally:
        store.close()


def test_a_bad_window_is_refused(tmp_path: Path) -> None:
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="ready_window"):
            JsonFileStorage(tmp_path / "s", ready_window=bad)  # type: ignore[arg-type]


def test_a_hidden_job_that_falls_due_is_claimed_before_the_window(
    pair: tuple[JsonFileStorage, MemoryStorage],
) -> None:
    json_store, _ = pair
    low = [make_job(priority=0) for _ in range(10)]
    high = make_job(priority=9, run_at=T0 + timedelta(seconds=10), created_at=T0)
    json_store.add_many([*low, high])
    fresh = JsonFileStorage(json_store.path, fsync=False, ready_window=3)
    try:
        # Rank the window at T0 (three due low jobs), changing nothing on disk.
        assert claim_ids(fresh, 0, limit=0) == []
        (cache,) = fresh.ctx.caches.values()
        assert high.id not in cache.by_id
        assert not cache.complete
        assert claim_ids(fresh, 20) == [high.id]  # hidden when ranked, due and first now
    finally:
        fresh.close()
