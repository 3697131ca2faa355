"""Worker processes sharing one PostgreSQL store: exactly-once, SIGKILL, lost connections.

Each test runs ``postgres_worker.py`` processes on a fresh schema. Every
execution of a handler appends ``<job id> <pid>`` to a record file, so the
test can count how often each job ran, and in which process.
"""

from __future__ import annotations

import collections
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backrun.jobs import WORKER_CRASHED_UNCHARGED, Job, JobState, new_job_id
from backrun.testing import wait_until
from tests.storage.postgres_support import (
    postgres_store,
    tagged_dsn,
    terminate_backends,
)

pytestmark = pytest.mark.postgres

PROGRAM = Path(__file__).parent / "postgres_worker.py"


class Cluster:
    """Worker processes on one schema, and what they recorded."""

    def __init__(self, store: Any, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self.record = workdir / "record.txt"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, threads: int = 4, lease: float = 60.0, recovery: float = 5.0) -> int:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROGRAM),
                tagged_dsn(self.store.schema + "_w"),
                self.store.schema,
                str(self.record),
                f"--threads={threads}",
                f"--lease={lease}",
                f"--recovery={recovery}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"worker{len(self.procs)}.log", "wb"),  # noqa: SIM115
        )
        self.procs.append(proc)
        return proc.pid

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

    def runs(self) -> list[tuple[str, int]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [(p[0], int(p[1])) for p in (line.split() for line in lines) if len(p) == 2]

    def started(self) -> list[tuple[str, int]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [(p[1], int(p[2])) for p in (line.split() for line in lines) if p[0] == "started"]

    def succeeded(self) -> int:
        counts: dict[Any, int] = self.store.counts()
        return counts.get(("default", JobState.SUCCEEDED), 0)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.workdir.glob("worker*.log")))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    store = postgres_store(pool_size=2)
    cluster = Cluster(store, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()
        store.close()


def jobs(handler: str, count: int, **payload: Any) -> list[Job]:
    now = datetime.now(UTC)
    return [
        Job(
            id=new_job_id(),
            handler=handler,
            payload=payload or {"n": i},
            run_at=now,
            created_at=now,
        )
        for i in range(count)
    ]


def test_three_workers_of_four_threads_run_5000_jobs_exactly_once(cluster: Cluster) -> None:
    first, second = jobs("crash.record", 2500), jobs("crash.record", 2500)
    cluster.store.add_many(first)
    for _ in range(3):
        cluster.start(threads=4)
    wait_until(lambda: cluster.succeeded() > 0, timeout=20)
    cluster.store.add_many(second)  # while they run: woken by NOTIFY
    wait_until(lambda: cluster.succeeded() == 5000, timeout=90)
    runs = collections.Counter(job_id for job_id, _ in cluster.runs())
    assert set(runs) == {j.id for j in first + second}
    assert set(runs.values()) == {1}, cluster.logs()
    assert {j.attempts for j in cluster.store.find(limit=10_000)} == {1}
    assert len({pid for _, pid in cluster.runs()}) == 3  # every process took a share


def test_a_sigkilled_workers_job_is_recovered_by_another_after_its_lease(
    cluster: Cluster,
) -> None:
    release = cluster.workdir / "release"
    [job] = jobs("crash.block", 1, release=str(release))
    victim = cluster.start(threads=1, lease=1.0, recovery=0.2)
    cluster.store.add(job)
    wait_until(lambda: cluster.started() == [(job.id, victim)], timeout=20)
    os.kill(victim, signal.SIGKILL)
    cluster.procs[0].wait(timeout=10)
    release.touch()
    rescuer = cluster.start(threads=1, lease=1.0, recovery=0.2)
    wait_until(lambda: cluster.store.get(job.id).state is JobState.SUCCEEDED, timeout=30)
    final = cluster.store.get(job.id)
    # A first crash is not charged (the job was not marked run_alone): attempt given back.
    assert final.attempts == 1
    assert [e.type for e in final.errors] == [WORKER_CRASHED_UNCHARGED]
    assert cluster.runs() == [(job.id, rescuer)]


def locked_workers(store: Any) -> int:
    """How many workers of the store hold their session lock (see postgres/sessions.py)."""
    return len(session_lock_pids(store))


def session_lock_pids(store: Any) -> set[int]:
    """The server pids holding the store's workers' session locks."""
    query = (
        f'SELECT l.pid FROM "{store.schema}".workers AS w JOIN pg_locks AS l '
        "ON l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = w.session_key "
        "WHERE w.session_lost_at IS NULL"
    )
    with store._db.connect() as conn:
        return {int(row[0]) for row in conn.execute(query).fetchall()}


def test_a_sigkilled_workers_job_is_recovered_in_about_recovery_interval_not_a_lease(
    cluster: Cluster,
) -> None:
    """Dead by its database session: recovery ~ recovery_interval + session_grace, lease 60 s."""
    for _ in range(2):
        cluster.start(threads=1, lease=60.0, recovery=0.2)
    recoveries: list[float] = []
    for kill in range(3):
        wait_until(lambda: locked_workers(cluster.store) == 2, timeout=20)
        release = cluster.workdir / f"release{kill}"
        [job] = jobs("crash.block", 1, release=str(release))
        cluster.store.add(job)
        wait_until(lambda j=job: j.id in dict(cluster.started()), timeout=20)  # type: ignore[misc]
        victim = dict(cluster.started())[job.id]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        release.touch()  # the rescued run ends at once
        next(p for p in cluster.procs if p.pid == victim).wait(timeout=10)
        wait_until(
            lambda j=job: cluster.store.get(j.id).state is JobState.SUCCEEDED,  # type: ignore[misc]
            timeout=15,  # a quarter of the lease: the lease alone cannot pass this
        )
        recoveries.append(time.monotonic() - killed)
        final = cluster.store.get(job.id)
        assert final.attempts == 1  # a first crash is not charged (it may not be the job's)
        assert [e.type for e in final.errors] == [WORKER_CRASHED_UNCHARGED]
        cluster.start(threads=1, lease=60.0, recovery=0.2)  # replace the victim
    print(f"recovery after SIGKILL: {[round(r, 2) for r in recoveries]} s")
    assert statistics.median(recoveries) < 5.0, recoveries


def test_a_live_worker_whose_connections_are_killed_keeps_its_job(cluster: Cluster) -> None:
    """Its session lock is freed with its connection: it must re-take it, not lose its job."""
    release = cluster.workdir / "release"
    [job] = jobs("crash.block", 1, release=str(release))
    for _ in range(2):
        cluster.start(threads=2, lease=60.0, recovery=0.1)
    wait_until(lambda: locked_workers(cluster.store) == 2, timeout=20)
    cluster.store.add(job)
    wait_until(lambda: len(cluster.started()) == 1, timeout=20)
    [(_, owner)] = cluster.started()
    for _ in range(3):
        old = session_lock_pids(cluster.store)
        assert terminate_backends(cluster.store.schema + "_w") >= 2
        # Both locks are free now; both workers must take them back within the
        # grace, on new connections (a killed backend lists its locks until it exits).
        wait_until(lambda old=old: len(session_lock_pids(cluster.store) - old) == 2, timeout=10)
    # Watch for three graces while the other worker scans for orphans every 0.1 s.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        current = cluster.store.get(job.id)
        assert (current.state, current.attempts) == (JobState.RUNNING, 1)
    release.touch()
    wait_until(lambda: cluster.store.get(job.id).state is JobState.SUCCEEDED, timeout=20)
    final = cluster.store.get(job.id)
    assert (final.attempts, final.errors) == (1, ())
    assert cluster.runs() == [(job.id, owner)]
    assert all(proc.poll() is None for proc in cluster.procs), cluster.logs()


def test_a_live_workers_long_job_is_never_taken(cluster: Cluster) -> None:
    release = cluster.workdir / "release"
    [job] = jobs("crash.block", 1, release=str(release))
    lease = 0.6
    for _ in range(2):
        cluster.start(threads=2, lease=lease, recovery=0.1)
    cluster.store.add(job)
    wait_until(lambda: len(cluster.started()) == 1, timeout=20)
    [(_, owner)] = cluster.started()
    # Watch for five leases while the other worker scans for orphans every 0.1 s.
    deadline = time.monotonic() + 5 * lease
    while time.monotonic() < deadline:
        current = cluster.store.get(job.id)
        assert current.state is JobState.RUNNING
        assert current.attempts == 1
    assert len(cluster.started()) == 1
    release.touch()
    wait_until(lambda: cluster.store.get(job.id).state is JobState.SUCCEEDED, timeout=20)
    final = cluster.store.get(job.id)
    assert (final.attempts, final.errors) == (1, ())
    assert cluster.runs() == [(job.id, owner)]


def test_killed_connections_during_a_run_lose_nothing(cluster: Cluster) -> None:
    batch = jobs("crash.record", 1500)
    cluster.store.add_many(batch)
    for _ in range(2):
        cluster.start(threads=4, lease=2.0, recovery=0.5)
    killed = 0
    for threshold in (300, 700, 1100):
        wait_until(lambda t=threshold: cluster.succeeded() >= t, timeout=60)  # type: ignore[misc]
        killed += terminate_backends(cluster.store.schema + "_w")
    assert killed >= 3
    wait_until(lambda: cluster.succeeded() == 1500, timeout=60)
    assert all(proc.poll() is None for proc in cluster.procs), cluster.logs()
    runs = collections.Counter(job_id for job_id, _ in cluster.runs())
    assert set(runs) == {j.id for j in batch}
    # A job runs twice only if its claim's reply was lost and it was rescued.
    rescued = {j.id for j in cluster.store.find(limit=10_000) if j.errors}
    assert {job_id for job_id, n in runs.items() if n > 1} <= rescued
