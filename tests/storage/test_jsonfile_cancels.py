"""A cancel of a RUNNING job asked from another process reaches the owner's store at once.

The owner's :meth:`subscribe` watcher fires when ``cancels/`` changes, and
:meth:`cancel_requests` answers from file names alone. Before, only ready
directories were watched: the owner learned of the cancel at its next
heartbeat (~20 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backrun.jobs import Job, JobState
from backrun.storage import fs
from backrun.storage.jsonfile import JsonFileStorage

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
IDS = [f"{n:032x}" for n in range(1, 4)]


def running_store(root: Path) -> tuple[JsonFileStorage, list[Job]]:
    owner = JsonFileStorage(root, fsync=False)
    owner.add_many([Job(id=i, handler="h", payload={}, run_at=T0, created_at=T0) for i in IDS])
    claimed = owner.claim(queues=None, limit=3, now=T0, worker_id="w", lease=LEASE)
    assert len(claimed) == 3
    return owner, claimed


def test_another_stores_cancel_wakes_the_owner_within_a_second(tmp_path: Path) -> None:
    owner, _ = running_store(tmp_path / "s")
    woken = threading.Event()
    unsubscribe = owner.subscribe(woken.set)
    other = JsonFileStorage(tmp_path / "s", fsync=False)  # another process's view
    assert owner.cancel_requests(IDS) == set()
    woken.clear()
    other.cancel(IDS[1], now=T0)
    assert woken.wait(1.0), "the owner's subscribers were not called"
    assert owner.cancel_requests(IDS) == {IDS[1]}
    unsubscribe()
    owner.close()
    other.close()


def test_a_cancel_from_a_real_process_wakes_the_owner_within_a_second(tmp_path: Path) -> None:
    root = tmp_path / "s"
    owner, _ = running_store(root)
    woken = threading.Event()
    owner.subscribe(woken.set)
    woken.clear()
    code = (
        "import sys\n"
        "from backrun.clock import utcnow\n"
        "from backrun.storage.jsonfile import JsonFileStorage\n"
        "JsonFileStorage(sys.argv[1], fsync=False).cancel(sys.argv[2], now=utcnow())\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(root), IDS[0]],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert woken.wait(1.0), "the owner's subscribers were not called"
    assert owner.cancel_requests(IDS) == {IDS[0]}
    owner.close()


def test_cancel_requests_reads_no_record(tmp_path: Path) -> None:
    owner, _ = running_store(tmp_path / "s")
    other = JsonFileStorage(tmp_path / "s", fsync=False)
    other.cancel(IDS[2], now=T0)
    calls = fs.Faults()
    with calls.installed():
        assert owner.cancel_requests(IDS) == {IDS[2]}
        assert other.cancel_requests(IDS) == {IDS[2]}  # not its claims: running/ is listed
    assert {op for op, _ in calls.log} == {"listdir"}
    owner.close()
    other.close()


def test_finished_or_unknown_jobs_are_never_reported(tmp_path: Path) -> None:
    owner, claimed = running_store(tmp_path / "s")
    owner.cancel(IDS[0], now=T0)
    done = next(j for j in claimed if j.id == IDS[0])
    owner.update(done.replace(state=JobState.CANCELLED, finished_at=T0))
    # The marker of the finished claim stays until maintain(); it must not count.
    assert os.listdir(tmp_path / "s" / "cancels") != []
    assert owner.cancel_requests([*IDS, f"{99:032x}"]) == set()
    other = JsonFileStorage(tmp_path / "s", fsync=False)
    assert other.cancel_requests(IDS) == set()
    owner.close()
    other.close()
