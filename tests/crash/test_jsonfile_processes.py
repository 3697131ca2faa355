"""Real worker processes on one JSON store: SIGKILL under load, several processes, recovery.

Workers are ``tests/crash/jsonfile_worker.py`` subprocesses; what they did is read
from the execution ledger their handler and store append to (see there).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backrun.jobs import Job, JobState, new_job_id
from backrun.storage.jsonfile import JsonFileStorage
from backrun.testing import wait_until

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("jsonfile_worker.py")


class Cluster:
    """Worker processes on one store, and what their ledger says."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "store"
        self.ledger = tmp_path / "ledger"
        self.store = JsonFileStorage(self.root, fsync=False)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.tmp / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(self.root), str(self.ledger), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def live_workers(self) -> int:
        return len(os.listdir(self.root / "workers"))

    def add(self, count: int, **payload: Any) -> list[Job]:
        now = datetime.now(UTC)
        jobs = [
            Job(id=new_job_id(), handler="work", payload=dict(payload), run_at=now, created_at=now)
            for _ in range(count)
        ]
        self.store.add_many(jobs)
        return jobs

    def succeeded(self) -> int:
        return self.store.counts().get(("default", JobState.SUCCEEDED), 0)

    def events(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """event -> job id -> [(pid, time)]."""
        table: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        if self.ledger.exists():
            for line in self.ledger.read_text().splitlines():
                event, job_id, pid, at = line.split()
                table[event][job_id].append((int(pid), float(at)))
        return table

    def starts(self) -> int:
        if not self.ledger.exists():
            return 0
        return self.ledger.read_text().count("start ")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.store.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(tmp_path)
    try:
        yield group
    finally:
        group.stop()


def test_sigkill_at_random_moments_loses_nothing_and_completes_nothing_twice(
    cluster: Cluster,
) -> None:
    rng = random.Random(4242)
    total, kills, threads = 1500, 0, 4
    jobs = cluster.add(total, sleep=0.004)
    workers = [cluster.start("--threads", str(threads), "--recovery", "0.2") for _ in range(2)]
    while kills < 8:
        target = cluster.starts() + rng.randrange(40, 140)
        wait_until(lambda t=target: cluster.starts() >= t, timeout=30, message="progress")
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        workers.append(cluster.start("--threads", str(threads), "--recovery", "0.2"))
    wait_until(lambda: cluster.succeeded() == total, timeout=90, message="all jobs done")
    cluster.stop()

    events = cluster.events()
    starts = Counter({job_id: len(runs) for job_id, runs in events["start"].items()})
    completed = Counter({job_id: len(runs) for job_id, runs in events["completed"].items()})
    lost = [j.id for j in jobs if (cluster.store.get(j.id) or j).state is not JobState.SUCCEEDED]
    duplicates = sum(n - 1 for n in starts.values())
    doubles = [job_id for job_id, n in completed.items() if n > 1]
    print(
        f"\nkills={kills} lost={len(lost)} double completions={len(doubles)} "
        f"duplicate executions={duplicates} (bound {kills * threads})"
    )
    assert lost == []
    assert doubles == []
    assert set(starts) == {j.id for j in jobs}
    assert duplicates <= kills * threads


def test_three_processes_run_3000_jobs_each_exactly_once(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.start("--threads", "4")
    wait_until(lambda: cluster.live_workers() == 3, timeout=30, message="3 workers up")
    jobs = cluster.add(3000)
    started = time.monotonic()
    wait_until(lambda: cluster.succeeded() == 3000, timeout=90, message="all jobs done")
    elapsed = time.monotonic() - started
    events = cluster.events()
    starts = Counter({job_id: len(runs) for job_id, runs in events["start"].items()})
    per_process = Counter(pid for runs in events["start"].values() for pid, _ in runs)
    print(f"\n3000 jobs in {elapsed:.2f} s; per process: {sorted(per_process.values())}")
    assert set(starts) == {j.id for j in jobs}
    assert set(starts.values()) == {1}
    assert len(per_process) == 3


def test_a_job_killed_mid_run_is_recovered_by_the_next_worker_within_seconds(
    cluster: Cluster,
) -> None:
    marker = cluster.tmp / "finish"
    first = cluster.start("--recovery", "1.0")
    (job,) = cluster.add(1, until=str(marker))
    wait_until(lambda: cluster.starts() == 1, timeout=30, message="job started")
    cluster.start("--recovery", "1.0")
    wait_until(lambda: cluster.live_workers() == 2, timeout=30, message="second worker up")
    killed_at = time.time()
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: cluster.starts() == 2, timeout=15, message="job recovered")
    (_, restarted_at) = cluster.events()["start"][job.id][1]
    recovery = restarted_at - killed_at
    print(f"\nrecovered {recovery:.3f} s after SIGKILL (recovery interval 1.0 s)")
    marker.touch()
    wait_until(lambda: cluster.succeeded() == 1, timeout=15, message="job done")
    final = cluster.store.get(job.id)
    assert final is not None
    # A first crash is not charged (the job was not marked run_alone): attempt given back.
    assert final.attempts == 1
    assert [e.type for e in final.errors] == ["WorkerCrashedUncharged"]
    assert recovery < 3.0


def test_a_live_workers_long_job_is_never_taken_by_another(cluster: Cluster) -> None:
    cluster.start("--lease", "1", "--recovery", "0.1")
    (job,) = cluster.add(1, sleep=10)
    wait_until(lambda: cluster.starts() == 1, timeout=30, message="job started")
    cluster.start("--lease", "1", "--recovery", "0.1")
    wait_until(lambda: cluster.succeeded() == 1, timeout=40, message="job done")
    runs = cluster.events()["start"][job.id]
    assert len(runs) == 1
    final = cluster.store.get(job.id)
    assert final is not None
    assert final.attempts == 1
