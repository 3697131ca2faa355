"""Records the store already knows: its own adds and its claims are not read back.

A claim of a job this store added uses the record it wrote, and a plain
success uses the record its claim found, but only while the file is the very
one written or found: any change rewrites a job under a new inode, and a file
rewritten under the same name by another store is read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from tests.storage.factories import make_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def claim(store: JsonFileStorage, worker: str = "w") -> list[Job]:
    return store.claim(queues=None, limit=10, now=T0, worker_id=worker, lease=LEASE)


def reads(calls: fs.Faults) -> int:
    return sum(op == "read" for op, _ in calls.log)


def test_a_claim_of_an_own_add_and_its_plain_success_read_no_record(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = make_job(run_at=T0, headers={"k": "v"})
    store.add(job)
    calls = fs.Faults()
    with calls.installed():
        [running] = claim(store)
        done = running.replace(
            state=JobState.SUCCEEDED, finished_at=T0 + timedelta(seconds=1), lease_expires_at=None
        )
        store.update(done)
    assert reads(calls) == 0
    assert running.payload == job.payload
    assert running.headers == job.headers
    assert running.attempts == 1
    assert running.state is JobState.RUNNING
    assert store.get(job.id) == done
    store.close()


def test_a_ready_file_rewritten_under_the_same_name_is_read_at_claim(tmp_path: Path) -> None:
    mine = JsonFileStorage(tmp_path / "s", fsync=False)
    other = JsonFileStorage(tmp_path / "s", fsync=False)
    job = make_job(run_at=T0)
    mine.add(job)  # mine keeps the record it wrote
    [taken] = claim(other, "o")
    # Given back unchanged in place and name, but as a new record: one attempt spent.
    other.update(taken.replace(state=JobState.QUEUED, lease_expires_at=None, worker_id=None))
    assert (other.get(job.id) or job).attempts == 1
    calls = fs.Faults()
    with calls.installed():
        [again] = claim(mine)
    assert reads(calls) == 1
    assert again.attempts == 2
    mine.close()
    other.close()


def test_a_running_file_rewritten_by_another_store_is_read_at_success(tmp_path: Path) -> None:
    mine = JsonFileStorage(tmp_path / "s", fsync=False)
    other = JsonFileStorage(tmp_path / "s", fsync=False)
    mine.add(make_job(run_at=T0))
    [running] = claim(mine)
    # Another store writes the claim's record in place (same token, same name).
    other.update(running.replace(headers={"changed": "yes"}))
    done = running.replace(
        state=JobState.SUCCEEDED, finished_at=T0 + timedelta(seconds=1), lease_expires_at=None
    )
    mine.update(done)
    assert mine.get(running.id) == done
    assert other.get(running.id) == done
    mine.close()
    other.close()


def test_an_own_running_write_is_not_mistaken_for_the_claimed_record(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    store.add(make_job(run_at=T0))
    [running] = claim(store)
    changed = running.replace(headers={"changed": "yes"})
    store.update(changed)
    done = changed.replace(
        state=JobState.SUCCEEDED, finished_at=T0 + timedelta(seconds=1), lease_expires_at=None
    )
    store.update(done)
    assert store.get(running.id) == done
    store.close()
