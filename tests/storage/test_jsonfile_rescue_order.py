"""A rescued orphan keeps its place in the JSON store's queue (issue 10 item 9, store side).

The engine's rescue record keeps the orphan's original ``run_at``; the JSON
store must file it under a ready name carrying that ``run_at``, so it is
claimed before every job enqueued after it, by this store and by any other.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.jobs import Job, JobState
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.layout import parse_ready, to_key

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def job(n: int, at: datetime) -> Job:
    return Job(id=f"{n:032x}", handler="h", payload={}, run_at=at, created_at=at)


@pytest.mark.parametrize("claimer", ["same store", "other store"])
def test_a_rescued_orphan_is_claimed_before_jobs_enqueued_after_it(
    tmp_path: Path, claimer: str
) -> None:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=False)
    store.add(job(1, T0))
    (taken,) = store.claim(queues=None, limit=1, now=T0, worker_id="dead", lease=LEASE)
    later = [job(n, T0 + timedelta(seconds=n)) for n in range(2, 12)]
    store.add_many(later)
    now = T0 + timedelta(minutes=1)
    (orphan,) = store.orphans(now=now)  # "dead" holds no worker lock
    assert orphan.id == taken.id
    # The rescue record the engine writes: QUEUED again, its original run_at kept.
    store.update(orphan.replace(state=JobState.QUEUED, run_at=orphan.run_at, lease_expires_at=None))
    (ready,) = [p for p in (root / "q" / "default" / "ready").iterdir() if orphan.id in p.name]
    parsed = parse_ready(ready.name)
    assert parsed is not None
    assert parsed.run_key == to_key(T0)
    other = store if claimer == "same store" else JsonFileStorage(root, fsync=False)
    order = [
        j.id
        for _ in range(len(later) + 1)
        for j in other.claim(queues=None, limit=1, now=now, worker_id="w", lease=LEASE)
    ]
    assert order[0] == orphan.id
    assert order == [orphan.id, *(j.id for j in later)]
