"""The completion flusher: with fsync=True a completion is made durable soon after it returns."""

from __future__ import annotations

import errno
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backrun.jobs import JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from tests.storage.factories import make_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def finish_one(store: JsonFileStorage) -> tuple[str, Path]:
    store.add(make_job(run_at=T0))
    [job] = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=timedelta(seconds=60))
    store.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0, lease_expires_at=None))
    return job.id, Path(store.path) / "q" / "default" / "succeeded"


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, operation: str, path: str) -> None:
        with self._lock:
            self.calls.append((operation, path, threading.current_thread().name))
        if self.fail and threading.current_thread().name == "backrun-json-flusher":
            raise OSError(errno.EIO, "injected", path)


def test_a_completion_is_flushed_off_the_worker_thread(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    recorder = Recorder()
    previous = fs.set_hook(recorder)
    try:
        job_id, succeeded = finish_one(store)
        returned = len(recorder.calls)
        assert store.flusher.wait(timeout=10)
    finally:
        fs.set_hook(previous)
    record = str(succeeded / f"{job_id}.json")
    before = recorder.calls[:returned]
    after = [(op, path) for op, path, thread in recorder.calls[returned:]]
    # The worker's update() syncs nothing of its completion ...
    syncs = ("fsync", "fsync_dir")
    assert not [c for c in before if c[0] in syncs and c[1] in (record, str(succeeded))]
    # ... the flusher syncs the record, then its directory and running/.
    assert after.index(("fsync", record)) < after.index(("fsync_dir", str(succeeded)))
    assert ("fsync_dir", str(tmp_path / "s" / "running")) in after
    assert all(thread == "backrun-json-flusher" for *_, thread in recorder.calls[returned:])
    assert store.get(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    store.close()


def test_close_flushes_what_is_left(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    store.flusher.window = 3600.0  # the thread would wait an hour: close() must not
    finish_one(store)
    store.close()
    assert store.flusher.wait(timeout=0)
    assert store.flusher.flushes == 1


def test_without_fsync_nothing_is_flushed(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    finish_one(store)
    store.close()
    assert store.flusher.flushes == 0


def test_a_failed_flush_is_logged_and_the_completion_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    previous = fs.set_hook(Recorder(fail=True))
    try:
        with caplog.at_level(logging.WARNING, logger="backrun.storage.jsonfile"):
            job_id, _ = finish_one(store)
            assert store.flusher.wait(timeout=10)
    finally:
        fs.set_hook(previous)
    assert "may not survive a power failure" in caplog.text
    assert store.get(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    store.close()
