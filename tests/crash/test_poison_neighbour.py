"""Innocent jobs survive a neighbour that kills the worker (real processes, SIGKILL).

One worker of 4 slots, restarted whenever it dies, runs 3 jobs of 500 ms and
one job whose handler SIGKILLs its own process. A crash is charged only to a
job that was running alone: the poison job ends DEAD after ``max_crashes``
charged crashes, the innocent ones SUCCEED. Before the rule, all 4 ended DEAD.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backrun.jobs import WORKER_CRASHED, WORKER_CRASHED_UNCHARGED, Job, JobState, new_job_id
from backrun.storage.base import Storage

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("poison_worker.py")
MAX_CRASHES = 3


def run_with_restarts(
    store: Storage, command: list[str], log_dir: Path, *, timeout: float
) -> tuple[list[Job], Job, int]:
    """Add the jobs, keep one worker alive until all are finished; return them and restarts."""
    now = datetime.now(UTC)
    innocent = [
        Job(id=new_job_id(), handler="nap", payload={"seconds": 0.5}, run_at=now, created_at=now)
        for _ in range(3)
    ]
    poison = Job(id=new_job_id(), handler="poison", payload={}, run_at=now, created_at=now)
    store.add_many([*innocent, poison])
    ids = [job.id for job in (*innocent, poison)]

    def start(n: int) -> subprocess.Popen[bytes]:
        with open(log_dir / f"worker-{n}.log", "wb") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    restarts = 0
    proc = start(0)
    deadline = time.monotonic() + timeout
    try:
        while not all(store.get(i).finished for i in ids):  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                states = {i: store.get(i).state.value for i in ids}  # type: ignore[union-attr]
                pytest.fail(f"not finished after {timeout} s ({restarts} restarts): {states}")
            if proc.poll() is not None:
                restarts += 1
                proc = start(restarts)
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    final = [store.get(job.id) for job in innocent]
    dead = store.get(poison.id)
    assert dead is not None
    assert all(job is not None for job in final)
    return final, dead, restarts  # type: ignore[return-value]


def check_outcome(innocent: list[Job], poison: Job, restarts: int) -> None:
    charged = [e for e in poison.errors if e.type == WORKER_CRASHED]
    print(
        f"\ninnocent: {[j.state.value for j in innocent]}; poison: {poison.state.value} "
        f"after {len(charged)} charged crashes; worker restarts: {restarts}"
    )
    assert [j.state for j in innocent] == [JobState.SUCCEEDED] * 3
    for job in innocent:
        assert all(e.type == WORKER_CRASHED_UNCHARGED for e in job.errors), job.errors
    assert poison.state is JobState.DEAD
    assert len(charged) == MAX_CRASHES
    assert restarts >= MAX_CRASHES


def test_json_store_poison_job_dies_alone(tmp_path: Path) -> None:
    from backrun.storage.jsonfile import JsonFileStorage

    store = JsonFileStorage(tmp_path / "store", fsync=False)
    command = [sys.executable, str(WORKER), "json", str(tmp_path / "store"), "--threads", "4"]
    command += ["--recovery", "0.2", "--max-crashes", str(MAX_CRASHES)]
    try:
        check_outcome(*run_with_restarts(store, command, tmp_path, timeout=90))
    finally:
        store.close()


def test_postgres_poison_job_dies_alone(tmp_path: Path) -> None:
    from tests.storage.postgres_support import postgres_dsn, postgres_store

    store = postgres_store()
    # A short lease: until a dead worker is detected by its session, the
    # PostgreSQL store notices one when its registration expires (one lease).
    command = [sys.executable, str(WORKER), "postgres", postgres_dsn(), store.schema]
    command += ["--threads", "4", "--lease", "1.5", "--recovery", "0.3"]
    command += ["--max-crashes", str(MAX_CRASHES)]
    try:
        check_outcome(*run_with_restarts(store, command, tmp_path, timeout=120))
    finally:
        store.close()
