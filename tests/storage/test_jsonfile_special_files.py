"""Non-regular files and stray names in the JSON store: refused and quarantined, never a hang.

A FIFO opened for reading blocks until a writer comes; a job file opened that
way would hang a worker or the CLI forever. Every call here runs in a thread
with a deadline, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from backrun.jobs import Job, JobState
from backrun.storage.jsonfile import JsonFileStorage
from backrun.storage.jsonfile.layout import ready_name, running_name

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
FIFO_ID = f"{9:032x}"
R = TypeVar("R")


def within(seconds: float, call: Callable[[], R]) -> R:
    """Run ``call`` in a thread; fail if it has not returned after ``seconds``."""
    result: list[R] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the call hung for {seconds} s")
    if errors:
        raise errors[0]
    return result[0]


def corrupt_reasons(root: Path) -> list[str]:
    return [p.read_text() for p in (root / "corrupt").iterdir() if p.name.endswith(".reason")]


def new_store(tmp_path: Path) -> tuple[JsonFileStorage, Path]:
    root = tmp_path / "s"
    store = JsonFileStorage(root, fsync=False)
    now = T0
    store.add(Job(id=f"{1:032x}", handler="h", payload={}, run_at=now, created_at=now))
    return store, root


def test_a_fifo_named_like_a_waiting_job_is_quarantined_and_the_real_job_claimed(
    tmp_path: Path,
) -> None:
    store, root = new_store(tmp_path)

    fifo = root / "q" / "default" / "ready" / ready_name(FIFO_ID, 100, T0, JobState.QUEUED)
    os.mkfifo(fifo, 0o600)
    claimed = within(
        10, lambda: store.claim(queues=None, limit=5, now=T0, worker_id="w", lease=LEASE)
    )
    assert [j.id for j in claimed] == [f"{1:032x}"]
    assert not fifo.exists()
    assert len(os.listdir(root / "running")) == 1
    assert any("FIFO" in reason for reason in corrupt_reasons(root))


@pytest.mark.parametrize("where", ["succeeded", "running"])
def test_get_find_and_counts_never_hang_on_a_fifo(tmp_path: Path, where: str) -> None:
    store, root = new_store(tmp_path)
    if where == "running":
        path = root / "running" / running_name(FIFO_ID, "ab" * 8, T0, "w")
    else:
        path = root / "q" / "default" / "succeeded" / f"{FIFO_ID}.json"
    os.mkfifo(path, 0o600)
    assert within(10, lambda: store.get(FIFO_ID)) is None
    assert within(10, lambda: store.find()) != []
    within(10, store.counts)
    assert not path.exists()
    assert any("FIFO" in reason for reason in corrupt_reasons(root))


def test_the_cli_lists_and_shows_without_hanging_on_a_fifo(tmp_path: Path) -> None:
    store, root = new_store(tmp_path)
    path = root / "q" / "default" / "dead" / f"{FIFO_ID}.json"
    os.mkfifo(path, 0o600)
    store.close()
    env = {**os.environ, "BACKRUN_DIR": str(root), "PYTHONPATH": os.getcwd()}
    for args in (["jobs", "show", FIFO_ID], ["jobs", "list"], ["stats"]):
        done = subprocess.run(
            [sys.executable, "-m", "backrun", *args],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
    assert not path.exists()


def test_a_stray_name_in_ready_is_quarantined_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, root = new_store(tmp_path)
    stray = root / "q" / "default" / "ready" / "notes.txt"
    stray.write_text("hello")
    caplog.set_level(logging.ERROR, logger="backrun.storage.jsonfile")
    for _ in range(3):
        store.claim(queues=None, limit=1, now=T0, worker_id="w", lease=LEASE)
        store.counts()
    assert not stray.exists()
    assert any("not a job file name" in reason for reason in corrupt_reasons(root))
    assert sum("notes.txt" in r.getMessage() for r in caplog.records) == 1


def test_a_stray_name_in_a_later_bucket_is_quarantined(tmp_path: Path) -> None:
    store, root = new_store(tmp_path)

    far = T0 + timedelta(days=1)
    store.add(
        Job(
            id=f"{2:032x}",
            handler="h",
            payload={},
            run_at=far,
            created_at=T0,
            state=JobState.SCHEDULED,
        )
    )
    (bucket,) = (root / "q" / "default" / "later").iterdir()
    stray = bucket / "junk"
    stray.write_text("x")
    claimed = store.claim(queues=None, limit=5, now=far, worker_id="w", lease=LEASE)
    assert sorted(j.id for j in claimed) == [f"{1:032x}", f"{2:032x}"]
    assert not stray.exists()
    assert not bucket.exists()
