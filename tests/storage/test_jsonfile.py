"""The JSON flat-file store beyond the shared contract: names, layout, safety, liveness."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backrun.errors import LeaseLost, StorageError
from backrun.jobs import Job, JobState, new_job_id
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage, window
from backrun.storage.jsonfile.layout import (
    decode_queue,
    encode_queue,
    parse_ready,
    parse_running,
    ready_name,
)
from backrun.testing import wait_until
from tests.storage.factories import LEASE, T0, make_job


@pytest.fixture
def store(tmp_path: Path) -> Any:
    storage = JsonFileStorage(tmp_path / "store", fsync=False)
    yield storage
    storage.close()


def claim(store: JsonFileStorage, *, now: datetime = T0, limit: int = 10, **kw: Any) -> list[Job]:
    kw.setdefault("worker_id", "w-test")
    kw.setdefault("queues", None)
    return store.claim(limit=limit, now=now, lease=LEASE, **kw)


def files_under(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file())


# -- names and layout ---------------------------------------------------------


def test_ready_names_sort_by_priority_then_run_at_then_id() -> None:
    ids = sorted(new_job_id() for _ in range(3))
    entries = [
        (5, T0 + timedelta(minutes=1), ids[0]),
        (5, T0, ids[2]),
        (5, T0, ids[1]),
        (-3, T0 - timedelta(days=400), ids[0]),
        (2**62, datetime(1, 1, 1, tzinfo=UTC), ids[0]),
        (0, datetime(9999, 12, 31, tzinfo=UTC), ids[0]),
    ]
    names = [ready_name(i, p, r, JobState.QUEUED) for p, r, i in entries]
    expected = sorted(entries, key=lambda e: (-e[0], e[1], e[2]))
    assert [parse_ready(n).job_id for n in sorted(names)] == [e[2] for e in expected]  # type: ignore[union-attr]
    assert [parse_ready(n).run_key for n in names] == [  # type: ignore[union-attr]
        parse_ready(ready_name(i, 0, r, JobState.QUEUED)).run_key  # type: ignore[union-attr]
        for _, r, i in entries
    ]
    with pytest.raises(ValueError, match="priority"):
        ready_name(ids[0], 2**62 + 1, T0, JobState.QUEUED)


@pytest.mark.parametrize("queue", ["default", "mail.high", "a/b", "..", ".hidden", "é~x", "q" * 90])
def test_queue_names_map_one_to_one_to_safe_directory_names(queue: str) -> None:
    encoded = encode_queue(queue)
    assert "/" not in encoded
    assert encoded not in (".", "..")
    assert not encoded.startswith(".")
    assert decode_queue(encoded) == queue


def test_an_overlong_queue_name_is_refused(store: JsonFileStorage) -> None:
    with pytest.raises(ValueError, match="too long"):
        store.add(make_job(queue="é" * 200))


def test_jobs_of_odd_queues_round_trip(store: JsonFileStorage) -> None:
    job = make_job(queue="../../etc")
    store.add(job)
    assert store.get(job.id) == job
    assert store.counts() == {("../../etc", JobState.QUEUED): 1}
    assert claim(store, queues=["../../etc"])[0].id == job.id


def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = JsonFileStorage(tmp_path / "store", fsync=True)
        store.add(make_job())
        store.register_worker("w-1", now=T0)
        claim(store, worker_id="w-1")
    finally:
        os.umask(old)
    for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    store.close()


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StorageError, match="symlink"):
        JsonFileStorage(tmp_path / "link")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_a_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(mode)
    with pytest.raises(StorageError, match="writable by group or others"):
        JsonFileStorage(target)


def test_a_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    target = tmp_path / "theirs"
    target.mkdir(mode=0o700)
    os.chown(target, 65534, 65534)
    with pytest.raises(StorageError, match="owned by uid 65534"):
        JsonFileStorage(target)


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        JsonFileStorage(tmp_path / "file")


@pytest.mark.parametrize("hostile", ["../x", "/etc/passwd", "a\x00b", "x" * 300, "A" * 32])
def test_hostile_ids_are_refused_before_any_path_is_built(
    store: JsonFileStorage, tmp_path: Path, hostile: str
) -> None:
    calls = fs.Faults()
    with calls.installed():
        for action in (
            lambda: store.get(hostile),
            lambda: store.cancel(hostile, now=T0),
            lambda: store.requeue(hostile, now=T0),
            lambda: store.add(make_job(id=hostile)),
            lambda: store.update(make_job(id=hostile, claim_token="0" * 16)),
        ):
            with pytest.raises(ValueError, match="job id"):
                action()
    assert calls.log == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_hostile_worker_id_is_refused(store: JsonFileStorage) -> None:
    store.add(make_job())
    for hostile in ("../w", "/w", "w\x00", ""):
        with pytest.raises(ValueError, match="worker id"):
            claim(store, worker_id=hostile)
        with pytest.raises(ValueError, match="worker id"):
            store.register_worker(hostile, now=T0)


# -- claims read names only, and do not grow with other jobs ------------------


def _calls_of_one_claim(store: JsonFileStorage) -> list[tuple[str, str]]:
    calls = fs.Faults()
    with calls.installed():
        assert len(claim(store, limit=1)) == 1
    return calls.log


def _settle(store: JsonFileStorage) -> None:
    """Backdate directory mtimes, as if the last change were long ago (no racy listing)."""
    past = (T0 - timedelta(days=3650)).timestamp()
    for path in [Path(store.path), *Path(store.path).rglob("*")]:
        if path.is_dir():
            os.utime(path, (past, past))


def test_claim_reads_names_only_and_only_the_file_it_takes(store: JsonFileStorage) -> None:
    store.add_many([make_job(payload={"i": i}) for i in range(500)])
    log = _calls_of_one_claim(store)
    assert [op for op, _ in log].count("read") == 1
    assert [op for op, _ in log].count("listdir") <= 3  # q/, the queue's later/ and ready/


def test_a_claim_costs_the_same_with_many_finished_and_far_future_jobs(tmp_path: Path) -> None:
    empty = JsonFileStorage(tmp_path / "empty", fsync=False)
    full = JsonFileStorage(tmp_path / "full", fsync=False)
    for store in (empty, full):
        store.add_many([make_job() for _ in range(5)])
    full.add_many([make_job(run_at=T0 + timedelta(days=d % 30 + 1)) for d in range(300)])
    finished = [make_job() for _ in range(200)]
    full.add_many(finished)
    for job in claim(full, limit=200):
        if job.id in {f.id for f in finished}:
            full.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    # Put the claimed jobs of the five back so both stores hold five due jobs.
    for job in full.find(state=JobState.RUNNING, limit=1000):
        full.update(job.replace(state=JobState.QUEUED))
    for store in (empty, full):
        claim(store, limit=1)  # first listing
        _settle(store)
        claim(store, limit=1)  # the listing is now trusted
    # The same calls, except that either may stat or re-list its small directories (timing).
    full_ops, empty_ops = _calls_of_one_claim(full), _calls_of_one_claim(empty)
    assert [op for op, _ in full_ops if op not in ("listdir", "stat")] == [
        op for op, _ in empty_ops if op not in ("listdir", "stat")
    ]
    assert all(p.endswith("/ready") for op, p in full_ops if op == "listdir")
    assert not [p for _, p in full_ops if "/succeeded" in p or "/later/" in p]
    empty.close()
    full.close()


def test_an_unchanged_ready_directory_is_not_listed_again(
    store: JsonFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claims' own renames move the directory's mtime, and a store cannot
    # tell its own change from another process's: once the re-list pause is
    # over (5 ms by default, which a loaded machine exceeds between two
    # calls) the next claim re-lists. A long pause takes that timing out.
    monkeypatch.setattr(window, "RELIST_MIN_S", 60.0)
    store.add_many([make_job() for _ in range(20)])
    claim(store, limit=1)
    _settle(store)
    claim(store, limit=1)
    log = _calls_of_one_claim(store)
    assert "listdir" not in [op for op, _ in log]


def test_jobs_written_by_another_process_are_seen(tmp_path: Path) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False)
    assert claim(b) == []
    low, high = make_job(priority=0), make_job(priority=9)
    a.add(low)
    a.add(high)
    assert [j.id for j in claim(b, limit=1)] == [high.id]
    assert [j.id for j in claim(a, limit=5)] == [low.id]
    a.close()
    b.close()


def test_far_future_jobs_wait_aside_and_never_run_early(store: JsonFileStorage) -> None:
    soon = make_job(run_at=T0 + timedelta(minutes=1))
    far = make_job(run_at=T0 + timedelta(days=2))
    store.add_many([soon, far])
    assert files_under(Path(store.path), "q/default/later")[0].name.endswith(f"{far.id}~s.json")
    assert claim(store, now=T0 + timedelta(seconds=59)) == []
    assert [j.id for j in claim(store, now=T0 + timedelta(minutes=1))] == [soon.id]
    assert store.next_run_at(queues=None) == far.run_at
    assert claim(store, now=T0 + timedelta(days=2) - timedelta(microseconds=1)) == []
    assert [j.id for j in claim(store, now=T0 + timedelta(days=2))] == [far.id]
    assert files_under(Path(store.path), "q/default/later") == []


def test_add_many_syncs_each_directory_once(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=True)
    store.add(make_job())
    calls = fs.Faults()
    with calls.installed():
        store.add_many([make_job(payload={"i": i}) for i in range(100)])
    ops = [op for op, _ in calls.log]
    synced = sorted(os.path.basename(p) for op, p in calls.log if op == "fsync_dir")
    # The staged batch, tmp/ for its commit rename, and ready/ once.
    assert len(synced) == 3
    assert synced[1:] == ["ready", "tmp"]
    assert ops.count("fsync") == 101  # each record and the batch's manifest
    store.close()


def test_fsync_false_never_syncs(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False)
    calls = fs.Faults()
    with calls.installed():
        store.add(make_job())
        (job,) = claim(store)
        store.update(job.replace(state=JobState.QUEUED))
        (job,) = claim(store)
        store.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    assert not {"fsync", "fsync_dir"} & {op for op, _ in calls.log}
    store.close()


# -- ownership across store instances ------------------------------------------


def test_a_stale_owner_in_another_instance_gets_lease_lost(tmp_path: Path) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False)
    a.add(make_job())
    (job,) = claim(a, worker_id="w-a")
    (orphan,) = b.orphans(now=T0)
    b.update(orphan.replace(state=JobState.QUEUED))
    with pytest.raises(LeaseLost):
        a.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    stored = b.get(job.id)
    assert stored is not None
    assert stored.state is JobState.QUEUED
    a.close()
    b.close()


def test_a_cancel_from_another_instance_reaches_the_owner(tmp_path: Path) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False)
    a.add(make_job())
    (job,) = claim(a)
    assert b.cancel(job.id, now=T0).cancel_requested
    assert a.heartbeat([job], worker_id="w-test", now=T0, lease_until=T0 + LEASE) == {job.id}
    a.update(job.replace(state=JobState.CANCELLED, finished_at=T0))
    b.maintain(now=T0)
    assert os.listdir(Path(a.path) / "cancels") == []
    a.close()
    b.close()


_HOLDER = textwrap.dedent(
    """
    import sys
    from backrun.storage.jsonfile import JsonFileStorage
    from datetime import datetime, UTC
    store = JsonFileStorage(sys.argv[1], fsync=False)
    store.register_worker("w-other", now=datetime.now(UTC))
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_live_workers_job_is_never_an_orphan_and_a_dead_ones_is(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"
        store.add(make_job())
        (job,) = claim(store, worker_id="w-other")
        assert store.orphans(now=T0 + timedelta(days=365)) == []
        holder.kill()
        holder.wait()
        wait_until(lambda: store.orphans(now=T0) != [], timeout=5)
        assert [o.id for o in store.orphans(now=T0)] == [job.id]
    finally:
        holder.kill()
        holder.wait()
        store.close()


def test_a_worker_lock_held_by_this_process_still_counts_as_live(tmp_path: Path) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False)
    a.register_worker("w-a", now=T0)
    a.add(make_job())
    claim(a, worker_id="w-a")
    assert b.orphans(now=T0) == []
    b.maintain(now=T0)
    assert (Path(a.path) / "workers" / "w-a.lock").exists()
    a.unregister_worker("w-a")
    assert len(b.orphans(now=T0)) == 1
    a.close()
    b.close()


# -- housekeeping --------------------------------------------------------------


def test_maintain_removes_stale_tmp_files_and_purges_after_retention(tmp_path: Path) -> None:
    store = JsonFileStorage(tmp_path / "s", fsync=False, retention=timedelta(days=7))
    stale = Path(store.path) / "tmp" / "leftover.tmp"
    stale.write_bytes(b"{half a rec")
    store.add(make_job())
    (job,) = claim(store)
    store.update(job.replace(state=JobState.SUCCEEDED, finished_at=T0))
    store.maintain(now=T0 + timedelta(days=6))
    assert stale.exists()
    assert store.get(job.id) is not None
    store.ctx.tmp_grace = timedelta(0)
    store.maintain(now=T0 + timedelta(days=7, seconds=1))
    assert not stale.exists()
    assert store.get(job.id) is None
    store.close()


def test_a_dead_stores_half_done_change_is_healed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=False)
    undone, done = make_job(), make_job()
    store.add_many([undone, done])
    jobs = {j.id: j for j in claim(store, limit=2)}
    session = "ab" * 8
    (root / "sessions" / f"{session}.lock").write_bytes(b"")
    # The dead store grabbed both; it published one change and not the other.
    for name in os.listdir(root / "running"):
        os.rename(root / "running" / name, root / "running" / f"{name}~{session}.grab")
    finished = jobs[done.id].replace(state=JobState.SUCCEEDED, finished_at=T0)
    target = root / "q" / "default" / "succeeded" / f"{done.id}.json"
    from backrun.serialization import dump_job

    target.write_bytes(dump_job(finished))
    os.utime(target, (T0.timestamp(), T0.timestamp()))
    other = JsonFileStorage(root, fsync=False)
    other.maintain(now=T0)
    assert sorted(os.listdir(root / "running")) == sorted(
        n for n in os.listdir(root / "running") if parse_running(n) is not None
    )
    stored_undone = other.get(undone.id)
    assert stored_undone is not None
    assert stored_undone.state is JobState.RUNNING
    stored_done = other.get(done.id)
    assert stored_done is not None
    assert stored_done.state is JobState.SUCCEEDED
    assert len(os.listdir(root / "running")) == 1
    assert f"{session}.lock" not in os.listdir(root / "sessions")  # the live store's stays
    store.close()
    other.close()


def test_subscribers_are_woken_when_another_store_adds_a_job(tmp_path: Path) -> None:
    a = JsonFileStorage(tmp_path / "s", fsync=False)
    b = JsonFileStorage(tmp_path / "s", fsync=False, watch_interval=0.005)
    a.add(make_job())  # the queue exists before the watcher starts
    woken: list[int] = []
    unsubscribe = b.subscribe(lambda: woken.append(1))
    assert b.watched()
    a.add(make_job())
    wait_until(lambda: woken, timeout=5, message="a wake-up")
    unsubscribe()
    b.close()
    assert not b.watched()
    a.close()
