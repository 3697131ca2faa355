"""add() refuses an id that exists in any state, atomically, across threads, views and processes."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from backrun.errors import StorageError
from backrun.jobs import Job, JobState
from backrun.serialization import dump_job, load_job
from backrun.storage import fs
from backrun.storage._jsonfile_ticks import tick_lock
from backrun.storage.jsonfile import JsonFileStorage
from tests.storage.factories import LEASE, T0, make_job


def claim_one(store: JsonFileStorage) -> Job:
    (job,) = store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
    return job


def copies(root: Path, job_id: str) -> int:
    return sum(
        1
        for path in root.rglob("*")
        if job_id in path.name and path.is_file() and path.parts[-2] not in ("ids", "ticks")
    )


@pytest.mark.parametrize("finish", [None, JobState.SUCCEEDED, JobState.DEAD])
def test_a_second_add_of_a_claimed_or_finished_job_is_refused_by_another_view(
    tmp_path: Path, finish: JobState | None
) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False)
    job = make_job()
    a.add(job)
    claimed = claim_one(a)
    if finish is not None:
        a.update(claimed.replace(state=finish, finished_at=T0))
    with pytest.raises(ValueError, match="exists already"):
        b.add(job)
    with pytest.raises(ValueError, match="exists already"):
        b.add_many([make_job(), job])
    assert b.add_once(job) is False
    assert copies(tmp_path / "s", job.id) == 1
    found = b.get(job.id)
    assert found is not None
    assert found.state is (finish or JobState.RUNNING)
    a.close()
    b.close()


def test_threads_of_two_views_adding_one_id_make_exactly_one_job(tmp_path: Path) -> None:
    views = [JsonFileStorage(tmp_path / "s", fsync=False) for _ in range(2)]
    for round_ in range(20):
        job = make_job()
        if round_ % 2:  # half the rounds race a claimed job's id
            views[0].add(make_job())
        barrier = threading.Barrier(8)
        wins: list[int] = []

        def add(
            n: int, job: Job = job, barrier: threading.Barrier = barrier, wins: list[int] = wins
        ) -> None:
            barrier.wait()
            try:
                if n % 3 == 0:
                    views[n % 2].add_many([make_job(), job])
                else:
                    views[n % 2].add(job)
                wins.append(n)
            except ValueError:
                pass

        threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1, (round_, wins)
        assert copies(tmp_path / "s", job.id) == 1
    for view in views:
        view.close()


def _add_in_process(root: str, job_record: bytes, start: object, results: object) -> None:
    store = JsonFileStorage(root, fsync=True)
    job = load_job(job_record)
    start.wait()  # type: ignore[attr-defined]
    try:
        store.add(job)
        results.put("won")  # type: ignore[attr-defined]
    except ValueError:
        results.put("refused")  # type: ignore[attr-defined]
    store.close()


def test_processes_adding_one_claimed_id_make_no_second_job(tmp_path: Path) -> None:
    root = tmp_path / "s"
    first = JsonFileStorage(root, fsync=True)
    taken = make_job()
    first.add(taken)
    claim_one(first)
    fresh = make_job()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_add_in_process, args=(str(root), dump_job(job), start, results))
        for job in (taken, taken, fresh, fresh, fresh)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["refused"] * 4 + ["won"]
    assert copies(root, taken.id) == 1
    assert copies(root, fresh.id) == 1
    first.close()


def test_a_killed_adders_reservation_does_not_block_a_retry(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for crash_at in range(1, 40):
        producer = JsonFileStorage(root / str(crash_at), fsync=True)
        job = make_job()
        faults = fs.Faults(crash_at)
        try:
            with faults.installed():
                producer.add(job)
        except fs.SimulatedCrash:
            pass
        producer.locks.release_all()  # the process is gone
        if not faults.fired:
            break
        retry = JsonFileStorage(root / str(crash_at), fsync=True)
        try:
            retry.add(job)
        except ValueError:
            assert retry.get(job.id) is not None, crash_at  # the killed add had made it
        assert copies(root / str(crash_at), job.id) == 1, crash_at
        retry.close()
    else:
        pytest.fail("add never completed")


def test_an_add_that_failed_can_be_retried_in_the_same_store(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    job = make_job()
    # Every call from the link into ready/ on fails, the clean-up's too.
    faults = fs.Faults(operations={"link", "unlink"}, at=2, error=28, repeat=True)
    with faults.installed(), pytest.raises(StorageError):
        store.add(job)
    assert store.get(job.id) is None
    store.add(job)
    assert store.get(job.id) is not None
    store.close()


def test_a_live_views_add_in_progress_is_not_taken_for_stale(tmp_path: Path) -> None:
    root = tmp_path / "s"
    slow = JsonFileStorage(root, fsync=False)
    other = JsonFileStorage(root, fsync=False)
    job = make_job()
    # The slow add stops dead after its reservation, its session still alive.
    faults = fs.Faults(operations={"link"}, at=2)
    with faults.installed(), pytest.raises(fs.SimulatedCrash):
        slow.add(job)
    with pytest.raises(ValueError, match="exists already"):
        other.add(job)
    slow.close()  # now it is gone: its reservation is stale
    other.add(job)
    assert other.get(job.id) is not None
    other.close()


def test_purge_frees_the_id(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    job = make_job()
    store.add(job)
    store.update(claim_one(store).replace(state=JobState.SUCCEEDED, finished_at=T0))
    assert store.purge(before=T0 + timedelta(seconds=1)) == 1
    assert not os.path.exists(tmp_path / "s" / "ids" / job.id)
    store.add(job)
    assert store.get(job.id) is not None
    store.close()


class ClaimedDuringFailingSync:
    """An fs hook: a worker claims the job right after its link, then the directory sync fails."""

    def __init__(self, ready: Path, running: Path) -> None:
        self.ready, self.running = ready, running

    def __call__(self, operation: str, path: str) -> None:
        if operation == "fsync_dir" and path == str(self.ready):
            for name in os.listdir(self.ready):
                os.rename(self.ready / name, self.running / name)
            raise OSError(errno.EIO, "injected", path)


def test_an_add_failing_after_its_job_was_taken_keeps_the_id(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=True)
    other = JsonFileStorage(root, fsync=True)
    store.ensure_queue("default")
    job = make_job()
    hook = ClaimedDuringFailingSync(root / "q" / "default" / "ready", tmp_path)
    previous = fs.set_hook(hook)
    try:
        with pytest.raises(StorageError):
            store.add(job)
    finally:
        fs.set_hook(previous)
    assert os.listdir(tmp_path / "s" / "ids") == [job.id]
    # The job exists (taken by a worker): a retry must not make a second one.
    (taken,) = [p for p in tmp_path.iterdir() if job.id in p.name]
    os.rename(taken, root / "q" / "default" / "ready" / taken.name)
    for view in (store, other):
        with pytest.raises(ValueError, match="exists already"):
            view.add(job)
    store.close()
    other.close()


def test_a_crash_while_freeing_an_id_lock_does_not_keep_it_locked(tmp_path: Path) -> None:
    """Found by the long crash model: a crash at the lock file's unlink leaked its descriptor."""
    job_id = "a" * 32
    faults = fs.Faults(operations={"unlink"}, at=1)
    with faults.installed(), pytest.raises(fs.SimulatedCrash), tick_lock(str(tmp_path), job_id):
        pass
    with tick_lock(str(tmp_path), job_id, wait=0.5):
        pass
