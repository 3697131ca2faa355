"""enqueue_many on the JSON store is all or none: crashed or failed at every file-system call.

A crash (the fault hook stops the process's work dead, as kill -9 would) at
any call of ``add_many`` must leave, once another store has run
``maintain``, either every job of the batch or none, and nothing in ``tmp/``.
An I/O error at any call must either raise (and then no job is visible) or
return (and then every job is, at once or after ``maintain``).
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.errors import StorageError
from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from tests.storage.test_jsonfile_crashpoints import copies

T0 = datetime(2030, 1, 1, tzinfo=UTC)
BATCH = 6
IDS = [f"{100 + n:032x}" for n in range(BATCH)]


def batch() -> list[Job]:
    jobs = []
    for n, job_id in enumerate(IDS):
        # One far-future job: the batch spans ready/ and a later/ bucket.
        run_at = T0 + timedelta(days=2) if n == BATCH - 1 else T0
        state = JobState.SCHEDULED if n == BATCH - 1 else JobState.QUEUED
        jobs.append(
            Job(
                id=job_id,
                handler="h",
                payload={"n": n},
                run_at=run_at,
                created_at=T0,
                state=state,
            )
        )
    return jobs


def visible(store: JsonFileStorage) -> int:
    return sum(store.get(job_id) is not None for job_id in IDS)


@pytest.mark.parametrize("durable", [False, True], ids=["nosync", "fsync"])
def test_a_batch_killed_at_any_call_is_all_there_or_none_of_it(
    tmp_path: Path, durable: bool
) -> None:
    outcomes: Counter[int] = Counter()
    for crash_at in range(1, 400):
        root = tmp_path / f"{crash_at}"
        store = JsonFileStorage(root, fsync=durable)
        faults = fs.Faults(crash_at)
        try:
            with faults.installed():
                store.add_many(batch())
        except fs.SimulatedCrash:
            pass
        store.ctx.locks.release_all()  # the process is gone
        if not faults.fired:
            break
        healer = JsonFileStorage(root, fsync=durable, tmp_grace=timedelta(0))
        healer.maintain(now=T0)
        count = visible(healer)
        assert count in (0, BATCH), (crash_at, faults.log[-1], count)
        outcomes[count] += 1
        assert sorted(copies(root)) == (sorted(IDS) if count else []), crash_at
        assert os.listdir(root / "tmp") == [], crash_at
        assert os.listdir(root / "corrupt") == [], crash_at
        if count:
            due = healer.claim(
                queues=None, limit=BATCH, now=T0, worker_id="w", lease=timedelta(seconds=30)
            )
            assert sorted(j.id for j in due) == sorted(IDS[:-1])
        healer.close()
    else:
        pytest.fail("add_many never completed")
    # Crashes before the commit rename leave nothing, after it everything.
    assert outcomes[0] >= 3
    assert outcomes[BATCH] >= 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_a_batch_failing_at_any_call_raises_with_none_visible_or_is_all_delivered(
    tmp_path: Path, code: int
) -> None:
    raised = delivered = 0
    for fail_at in range(1, 400):
        root = tmp_path / f"{fail_at}"
        store = JsonFileStorage(root, fsync=True)
        faults = fs.Faults(fail_at, error=code)
        try:
            with faults.installed():
                store.add_many(batch())
        except StorageError:
            raised += 1
            assert visible(store) == 0, fail_at
            assert os.listdir(root / "tmp") == [], fail_at
            store.close()
            continue
        if not faults.fired:
            store.close()
            break
        delivered += 1
        store.maintain(now=T0)  # finishes a committed batch a failed step left
        assert visible(store) == BATCH, fail_at
        assert os.listdir(root / "tmp") == [], fail_at
        store.close()
    else:
        pytest.fail("add_many never completed")
    assert raised >= 3


def test_a_batch_with_a_known_id_is_refused_whole(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    jobs = batch()
    store.add(jobs[2])
    with pytest.raises(ValueError, match="exists already"):
        store.add_many(jobs)
    assert visible(store) == 1
    assert os.listdir(tmp_path / "s" / "tmp") == []


def test_a_live_stores_batch_in_progress_is_left_alone(tmp_path: Path) -> None:
    """Another store's maintain() never touches a batch whose writer still lives."""
    root = tmp_path / "s"
    writer = JsonFileStorage(root, fsync=False)
    faults = fs.Faults(operations={"rename"}, at=2)  # stops after the commit rename
    with faults.installed(), pytest.raises(fs.SimulatedCrash):
        writer.add_many(batch())
    (committed,) = os.listdir(root / "tmp")
    other = JsonFileStorage(root, fsync=False, tmp_grace=timedelta(0))
    other.maintain(now=T0)
    assert os.listdir(root / "tmp") == [committed]
    assert visible(other) == 0
    writer.ctx.locks.release_all()  # now the writer dies
    other.maintain(now=T0)
    assert os.listdir(root / "tmp") == []
    assert visible(other) == BATCH
