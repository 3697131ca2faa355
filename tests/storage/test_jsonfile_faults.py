"""The JSON store under damage: torn and flipped files, and injected I/O errors."""

from __future__ import annotations

import errno
import logging
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backrun.errors import StorageError
from backrun.jobs import Job, JobError, JobState, new_job_id
from backrun.serialization import dump_job
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.layout import ready_name

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)
ERRNOS = [errno.ENOSPC, errno.EIO, errno.EACCES]


def make_job(**changes: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "handler": "tests.noop",
        "payload": {"text": "héllo", "n": [1, 2, 3]},
        "run_at": T0,
        "created_at": T0,
        "headers": {"traceparent": "00-abc-def-01"},
        "errors": (JobError("ValueError", "boom", "Traceback...", 1, T0),),
    }
    fields.update(changes)
    return Job(**fields)


def claim_all(store: JsonFileStorage) -> list[Job]:
    return store.claim(queues=None, limit=10_000, now=T0, worker_id="w", lease=LEASE)


def plant(store: JsonFileStorage, job: Job, data: bytes) -> Path:
    """Write raw bytes where the store keeps ``job`` while it waits."""
    store.add(make_job())  # creates the queue's directories
    path = Path(store.path) / "q" / "default" / "ready"
    path = path / ready_name(job.id, job.priority, T0, JobState.QUEUED)
    path.write_bytes(data)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Any:
    storage = JsonFileStorage(tmp_path / "store", fsync=True)
    yield storage
    storage.close()


def corrupt_names(store: JsonFileStorage) -> list[str]:
    return sorted(os.listdir(Path(store.path) / "corrupt"))


# -- torn and flipped files ---------------------------------------------------


def test_every_prefix_of_a_record_is_quarantined_and_the_scan_goes_on(
    store: JsonFileStorage, caplog: pytest.LogCaptureFixture
) -> None:
    data = dump_job(make_job())
    ready = Path(store.path) / "q" / "default" / "ready"
    good = make_job()
    store.add(good)
    torn_ids = []
    for cut in range(len(data)):
        job = make_job()
        torn_ids.append(job.id)
        (ready / ready_name(job.id, 0, T0, JobState.QUEUED)).write_bytes(data[:cut])
    with caplog.at_level(logging.ERROR, logger="backrun.storage.jsonfile"):
        assert [j.id for j in claim_all(store)] == [good.id]
        claim_all(store)
    names = corrupt_names(store)
    assert len([n for n in names if n.endswith(".reason")]) == len(data)
    assert len([n for n in names if not n.endswith(".reason")]) == len(data)
    assert len(caplog.records) == len(data)  # logged once each, not again on the next scan
    assert all(store.get(i) is None for i in torn_ids[:20])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: b"", id="zero-length"),
        pytest.param(lambda d: d + b"garbage", id="garbage-appended"),
        pytest.param(lambda d: d.replace(b'"v":1', b'"v":9'), id="unknown-version"),
        pytest.param(lambda d: b"[1,2]", id="not-an-object"),
        pytest.param(lambda d: b"\xff\xfe" + d, id="not-utf8"),
    ],
)
def test_a_damaged_file_is_quarantined_with_its_reason(store: JsonFileStorage, damage: Any) -> None:
    job = make_job()
    path = plant(store, job, damage(dump_job(job)))
    assert store.get(job.id) is None
    assert not path.exists()
    reasons = [n for n in corrupt_names(store) if n.endswith(".reason")]
    assert len(reasons) == 1
    assert (Path(store.path) / "corrupt" / reasons[0]).read_text().strip()
    assert len(claim_all(store)) == 1  # the healthy job beside it


def test_a_record_under_the_wrong_name_is_quarantined(store: JsonFileStorage) -> None:
    job, other = make_job(), make_job()
    plant(store, job, dump_job(other))
    assert store.get(job.id) is None
    assert any(
        "does not match" in (Path(store.path) / "corrupt" / n).read_text()
        for n in corrupt_names(store)
        if n.endswith(".reason")
    )


def test_200_seeded_bit_flips_never_stop_a_scan(store: JsonFileStorage) -> None:
    rng = random.Random(20301)
    ready = Path(store.path) / "q" / "default" / "ready"
    store.add(make_job())
    jobs = {}
    for _ in range(200):
        job = make_job(payload={"k": rng.randrange(10**6), "s": "x" * rng.randrange(40)})
        data = bytearray(dump_job(job))
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        (ready / ready_name(job.id, 0, T0, JobState.QUEUED)).write_bytes(bytes(data))
        jobs[job.id] = job
    store.counts()
    found = store.find(limit=10_000)
    claimed = claim_all(store)
    quarantined = len([n for n in corrupt_names(store) if not n.endswith(".reason")])
    assert {j.id for j in found} == {j.id for j in claimed} | {
        j.id for j in found if j.state is JobState.RUNNING
    }
    assert len(claimed) + quarantined == 201
    assert quarantined > 100  # most flips break the JSON or the record; the rest still parse
    for job in claimed:
        assert job.id in jobs or job.handler == "tests.noop"


# -- injected I/O errors -------------------------------------------------------


def nothing_visible(store: JsonFileStorage) -> bool:
    return store.find(limit=100) == [] and os.listdir(Path(store.path) / "tmp") == []


@pytest.mark.parametrize("error", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("operation", ["open", "write", "fsync", "link", "fsync_dir"])
def test_enqueue_under_an_io_error_raises_and_leaves_nothing(
    store: JsonFileStorage, operation: str, error: int
) -> None:
    store.ctx.ensure_queue("default")
    job = make_job()
    faults = fs.Faults(1, error=error, operations=[operation], repeat=True)
    with faults.installed(), pytest.raises(StorageError, match=os.strerror(error)):
        store.add(job)
    assert faults.fired >= 1
    assert nothing_visible(store)
    store.add(job)  # the fault cleared
    assert store.get(job.id) == job


@pytest.mark.parametrize("at", [1, 17, 50, 99])
def test_a_batch_broken_midway_leaves_none_of_its_jobs(store: JsonFileStorage, at: int) -> None:
    store.ctx.ensure_queue("default")
    batch = [make_job(payload={"i": i}) for i in range(60)]
    with fs.Faults(at, error=errno.ENOSPC).installed(), pytest.raises(StorageError):
        store.add_many(batch)
    assert nothing_visible(store)
    store.add_many(batch)
    assert len(store.find(limit=100)) == 60


@pytest.mark.parametrize("error", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("at", range(1, 9))
@pytest.mark.parametrize("plain", [False, True], ids=["full-write", "by-rename"])
def test_an_update_under_an_io_error_changes_nothing_and_can_be_retried(
    store: JsonFileStorage, error: int, at: int, plain: bool
) -> None:
    store.add(make_job())
    (running,) = claim_all(store)
    done = running.replace(state=JobState.SUCCEEDED, finished_at=T0)
    if plain:  # a success recorded by one rename
        done = done.replace(lease_expires_at=None)
    faults = fs.Faults(at, error=error)
    with faults.installed():
        try:
            store.update(done)
        except StorageError:
            stored = store.get(running.id)
            assert stored is not None
            assert stored.state is JobState.RUNNING
        else:
            assert faults.fired == 0 or store.get(running.id) == done
    if store.get(running.id) != done:
        store.update(done)
    assert store.get(running.id) == done
    store.maintain(now=T0)
    assert [p.name for p in Path(store.path).rglob("*.grab")] == []


@pytest.mark.parametrize("operation", ["rename", "utime", "listdir", "stat"])
def test_a_claim_under_an_io_error_raises_and_loses_nothing(
    store: JsonFileStorage, operation: str
) -> None:
    job = make_job()
    store.add(job)
    with fs.Faults(1, error=errno.EIO, operations=[operation], repeat=True).installed():
        try:
            claimed = claim_all(store)
        except StorageError:
            claimed = []
    stored = store.get(job.id)
    assert stored is not None
    if claimed:
        assert stored.state is JobState.RUNNING
    else:
        assert stored.state in (JobState.QUEUED, JobState.RUNNING)
        if stored.state is JobState.QUEUED:
            assert [j.id for j in claim_all(store)] == [job.id]


def test_an_unreadable_file_is_quarantined_not_fatal(store: JsonFileStorage) -> None:
    good, bad = make_job(), make_job()
    store.add_many([bad, good])
    bad_path = next(p for p in (Path(store.path) / "q").rglob("*.json") if bad.id in p.name)
    calls = 0

    def hook(operation: str, path: str) -> None:
        nonlocal calls
        if operation == "read" and bad.id in path:
            calls += 1
            raise OSError(errno.EIO, "injected", path)

    previous = fs.set_hook(hook)
    try:
        claimed = claim_all(store)
    finally:
        fs.set_hook(previous)
    assert [j.id for j in claimed] == [good.id]
    assert calls == 1
    assert not bad_path.exists()
