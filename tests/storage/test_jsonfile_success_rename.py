"""A plain success is recorded by ONE rename of the running file into succeeded/."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.core import to_ns
from backrun.storage.jsonfile.layout import CLAIM_XATTR
from tests.storage.factories import make_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def claimed(store: JsonFileStorage) -> Job:
    store.add(make_job(run_at=T0))
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    return job


def plain_success(job: Job) -> Job:
    return job.replace(
        state=JobState.SUCCEEDED, finished_at=T0 + timedelta(seconds=3), lease_expires_at=None
    )


def succeeded_file(store: JsonFileStorage, job: Job) -> Path:
    return Path(store.path) / "q" / "default" / "succeeded" / f"{job.id}.json"


@pytest.mark.parametrize("durable", [False, True])
def test_a_plain_success_is_one_rename_and_reads_back_whole(tmp_path: Path, durable: bool) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=durable)
    job = claimed(store)
    done = plain_success(job)
    calls = fs.Faults()
    with calls.installed():
        store.update(done)
    ops = [op for op, _ in calls.log]
    assert ops.count("rename") == 1
    assert not {"write", "link", "unlink", "fsync", "fsync_dir"} & set(ops)
    assert store.get(job.id) == done
    path = succeeded_file(store, job)
    assert path.stat().st_mtime_ns == to_ns(done.finished_at)  # type: ignore[arg-type]
    assert os.getxattr(path, CLAIM_XATTR)
    assert os.listdir(Path(store.path) / "running") == []
    assert store.find(state=JobState.SUCCEEDED) == [done]
    assert store.counts()[("default", JobState.SUCCEEDED)] == 1
    store.close()
    reopened = JsonFileStorage(tmp_path / "s", fsync=durable)
    assert reopened.get(job.id) == done
    reopened.close()


@pytest.mark.parametrize(
    "change",
    [
        {"result": 42},
        {"lease_expires_at": T0 + LEASE},  # not the job the running file stands for
        {"payload": {"changed": True}},
    ],
    ids=["result", "other-lease", "other-payload"],
)
def test_any_other_success_keeps_the_full_write(tmp_path: Path, change: dict[str, object]) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = claimed(store)
    done = plain_success(job).replace(**change)
    calls = fs.Faults()
    with calls.installed():
        store.update(done)
    ops = [op for op, _ in calls.log]
    assert "write" in ops
    assert ops.count("rename") >= 2
    assert store.get(job.id) == done
    store.close()


def test_a_stale_owner_s_rename_fails_with_lease_lost(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = claimed(store)
    running = Path(store.path) / "running"
    [name] = os.listdir(running)
    os.rename(running / name, tmp_path / "taken")  # a rescuer took the file away
    with pytest.raises(LeaseLost):
        store.update(plain_success(job))
    assert not succeeded_file(store, job).exists()
    store.close()


def test_a_crash_before_the_utime_keeps_the_finish_time(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = claimed(store)
    done = plain_success(job)
    crash = fs.Faults(1, operations=["utime"])
    with crash.installed(), pytest.raises(fs.SimulatedCrash):
        store.update(done)
    store.ctx.locks.release_all()
    healer = JsonFileStorage(tmp_path / "s", fsync=False)
    healer.maintain(now=T0)
    assert healer.get(job.id) == done  # finished_at from the attribute, not the lease mtime
    healer.close()


def test_without_extended_attributes_the_full_write_is_used(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = claimed(store)
    refuse = fs.Faults(1, error=95, operations=["setxattr"])  # EOPNOTSUPP
    with refuse.installed():
        store.update(plain_success(job))
    assert not store.ctx.xattrs
    assert store.get(job.id) == plain_success(job)
    with pytest.raises(OSError):
        os.getxattr(succeeded_file(store, job), CLAIM_XATTR)
    store.close()
