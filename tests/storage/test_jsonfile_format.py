"""The store's format version: a 0.1.0 store is upgraded in place, crash-safely; newer is refused.

The fixture ``fixtures/store-0.1.0.tar.gz`` was written by the 0.1.0 code
(commit afa1cd1) with ``fixtures/make_store_010.py``: one job in each of
ready, later, running, succeeded, dead and cancelled.
"""

from __future__ import annotations

import errno
import json
import tarfile
import threading
from pathlib import Path

import pytest

from backrun.errors import StorageError
from backrun.jobs import JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.fileformat import FORMAT, read_format
from tests.storage.factories import LEASE, T0, make_job

FIXTURE = Path(__file__).parent / "fixtures" / "store-0.1.0.tar.gz"
STATES = {
    "ready": JobState.QUEUED,
    "later": JobState.SCHEDULED,
    "running": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "dead": JobState.DEAD,
    "cancelled": JobState.CANCELLED,
}
IDS = {name: f"{n + 1:032x}" for n, name in enumerate(STATES)}


def old_store(tmp_path: Path, name: str = "old") -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / name, filter="tar")
    return tmp_path / name / "store"


def job_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "q").rglob("*.json") if p.is_file()) + sorted(
        p.name for p in (root / "running").iterdir()
    )


def check_upgraded(root: Path) -> None:
    """Open the store (finishing an upgrade if one is due) and check every job."""
    store = JsonFileStorage(root, fsync=False)
    assert read_format(str(root)) == FORMAT
    for name, state in STATES.items():
        job = store.get(IDS[name])
        assert job is not None, name
        assert job.state is state, name
        assert job.payload == {"was": name}
    with pytest.raises(ValueError, match="exists already"):
        store.add(make_job(id=IDS["ready"]))
    (due,) = store.claim(queues=None, limit=5, now=T0, worker_id="w", lease=LEASE)
    assert due.id == IDS["ready"]
    store.close()


def test_the_fixture_is_a_010_store(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    assert read_format(str(root)) == 1
    assert not (root / "format").exists()
    assert len(job_files(root)) == 6


def test_a_010_store_is_upgraded_when_opened(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    before = job_files(root)
    JsonFileStorage(root, fsync=True).close()
    assert json.loads((root / "format").read_bytes()) == {"version": FORMAT}
    assert job_files(root) == before
    check_upgraded(root)


def test_an_upgrade_killed_at_any_call_is_finished_by_the_next_opener(tmp_path: Path) -> None:
    for crash_at in range(1, 200):
        root = old_store(tmp_path, str(crash_at))
        faults = fs.Faults(crash_at)
        try:
            with faults.installed():
                JsonFileStorage(root, fsync=True).close()
        except fs.SimulatedCrash:
            pass
        if not faults.fired:
            break
        # The crashed opener's flocks die with its descriptors (it is "gone").
        assert read_format(str(root)) in (1, FORMAT)
        check_upgraded(root)
    else:
        pytest.fail("the upgrade never completed")
    assert crash_at > 4


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_an_upgrade_failing_at_any_call_raises_and_a_retry_completes(
    tmp_path: Path, code: int
) -> None:
    raised = 0
    for fail_at in range(1, 200):
        root = old_store(tmp_path, str(fail_at))
        faults = fs.Faults(fail_at, error=code)
        try:
            with faults.installed():
                JsonFileStorage(root, fsync=True).close()
        except StorageError:
            raised += 1
            # Only the last step (the root's fsync) can fail after the commit rename.
            assert read_format(str(root)) == 1 or faults.log[-1][0] == "fsync_dir"
            assert not any(p.name.endswith(".tmp") for p in (root / "tmp").iterdir())
        if not faults.fired:
            break
        check_upgraded(root)
    else:
        pytest.fail("the upgrade never completed")
    assert raised >= 4


def test_threads_opening_an_old_store_at_once_all_get_an_upgraded_store(tmp_path: Path) -> None:
    root = old_store(tmp_path)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            JsonFileStorage(root, fsync=True).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check_upgraded(root)


def test_a_new_store_is_written_with_the_current_format(tmp_path: Path) -> None:
    JsonFileStorage(tmp_path / "s").close()
    assert read_format(str(tmp_path / "s")) == FORMAT


@pytest.mark.parametrize("create", [True, False])
def test_a_store_of_a_newer_format_is_refused_with_a_clear_error(
    tmp_path: Path, create: bool
) -> None:
    JsonFileStorage(tmp_path / "s").close()
    (tmp_path / "s" / "format").write_text(json.dumps({"version": FORMAT + 1}))
    with pytest.raises(StorageError, match=f"format version {FORMAT + 1}.*upgrade backrun"):
        JsonFileStorage(tmp_path / "s", create=create)


def test_a_damaged_format_file_is_refused(tmp_path: Path) -> None:
    JsonFileStorage(tmp_path / "s").close()
    (tmp_path / "s" / "format").write_bytes(b"\x00garbage")
    with pytest.raises(StorageError, match="format file is damaged"):
        JsonFileStorage(tmp_path / "s")


def test_a_format_2_store_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=False)
    job = make_job()
    store.add(job)
    store.close()
    (root / "format").write_text(json.dumps({"version": 2}))
    reopened = JsonFileStorage(root, fsync=False)
    assert read_format(str(root)) == FORMAT == 3
    assert reopened.get(job.id) == job
    reopened.close()
