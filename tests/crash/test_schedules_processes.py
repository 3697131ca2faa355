"""Periodic jobs across real worker processes: 3 interpreters, SIGKILLs, every tick exactly once.

Workers are ``tests/crash/schedules_worker.py`` subprocesses with an
``every=1 s`` schedule; the ledger their handler appends to records each run's
tick (``run_at``). Over an 8 s window during which workers are SIGKILLed and
replaced (at least one is always up), every tick must have run, and no tick
may have two jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backrun.testing import wait_until
from tests.storage.postgres_support import (
    drop_schema,
    postgres_dsn,
    require_postgres,
    unique_schema,
)

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("schedules_worker.py")
SECOND = 1_000_000_000


class Cluster:
    """Schedule worker processes on one store, and their ledger."""

    def __init__(self, tmp_path: Path, store_args: list[str]) -> None:
        self.tmp = tmp_path
        self.ledger = tmp_path / "ledger"
        self.store_args = store_args
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(self.ledger), *self.store_args, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def wait_up(self) -> None:
        """Wait until every worker started so far has reported that it is running."""
        wait_until(
            lambda: len(self.lines("up ")) >= len(self.procs), timeout=60, message="workers up"
        )

    def lines(self, event: str) -> list[list[str]]:
        if not self.ledger.exists():
            return []
        return [
            line.split() for line in self.ledger.read_text().splitlines() if line.startswith(event)
        ]

    def runs(self) -> dict[int, set[str]]:
        """tick (ns) -> the distinct job ids that ran for it."""
        table: dict[int, set[str]] = defaultdict(set)
        for _, tick, job_id, _ in self.lines("run "):
            table[int(tick)].add(job_id)
        return table

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker-*.log"))
        )

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


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def churn_and_count(cluster: Cluster) -> tuple[int, int, int]:
    """Run 3 workers for an 8 s window with SIGKILLs; return (ticks, gaps, duplicates)."""
    workers = [cluster.start() for _ in range(3)]
    cluster.wait_up()
    wait_until(lambda: cluster.runs(), timeout=10, message="a first tick")
    start = time.time_ns() // SECOND * SECOND + SECOND
    end = start + 8 * SECOND
    # Kill the oldest worker and start a replacement every 1.5 s (some kills land
    # exactly on a tick). A kill waits for the last replacement to be up, so
    # two workers run at every moment: on a loaded machine an interpreter can
    # take seconds to start, and a window with none up is downtime, not churn.
    for step in range(5):
        time.sleep(max(0.0, (start + (step + 1) * 1.5 * SECOND - time.time_ns()) / SECOND))
        cluster.wait_up()
        kill(workers.pop(0))
        workers.append(cluster.start())
    time.sleep(max(0.0, (end - time.time_ns()) / SECOND))
    window = range(start, end + 1, SECOND)
    have = cluster.runs
    wait_until(
        lambda: all(t in have() for t in window), timeout=15, message="every tick in the window ran"
    )
    runs = cluster.runs()
    gaps = sum(1 for t in window if t not in runs)
    duplicates = sum(len(runs[t]) - 1 for t in window if t in runs)
    duplicates += sum(len(ids) - 1 for ids in runs.values() if len(ids) > 1)  # outside it too
    return len(window), gaps, duplicates


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], Cluster]]:
    made: list[Cluster] = []

    def make(store_args: list[str]) -> Cluster:
        made.append(Cluster(tmp_path, store_args))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


def test_json_store_three_workers_with_sigkills_run_every_tick_once(
    cluster_factory: Callable[[list[str]], Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(["--json", str(tmp_path / "store")])
    ticks, gaps, duplicates = churn_and_count(cluster)
    assert (ticks, gaps, duplicates) == (9, 0, 0), cluster.logs()


def test_postgres_three_workers_with_sigkills_run_every_tick_once(
    cluster_factory: Callable[[list[str]], Cluster],
) -> None:
    require_postgres()
    from backrun.storage.postgres import PostgresStorage

    schema = unique_schema()
    PostgresStorage(postgres_dsn(), schema=schema, pool_size=1).migrate()
    try:
        cluster = cluster_factory(["--postgres", postgres_dsn(), schema])
        ticks, gaps, duplicates = churn_and_count(cluster)
        assert (ticks, gaps, duplicates) == (9, 0, 0), cluster.logs()
        cluster.stop()
    finally:
        drop_schema(schema)


@pytest.mark.parametrize(("misfire", "catch_up"), [("once", 1), ("skip", 0)])
def test_all_workers_down_for_5_ticks_then_one_catch_up_or_none(
    cluster_factory: Callable[[list[str]], Cluster], tmp_path: Path, misfire: str, catch_up: int
) -> None:
    cluster = cluster_factory(["--json", str(tmp_path / "store"), "--misfire", misfire])
    workers = [cluster.start() for _ in range(2)]
    cluster.wait_up()
    wait_until(lambda: len(cluster.runs()) >= 2, timeout=20, message="two ticks ran")
    for proc in workers:
        kill(proc)
    killed_at = time.time_ns()
    time.sleep(5.5)  # 5 ticks pass with no worker
    for _ in range(3):
        cluster.start("--start-mid-interval")
    cluster.wait_up()
    back_at = min(int(up[1]) for up in cluster.lines("up ")[2:])
    assert back_at - killed_at > 5 * SECOND
    resumed = back_at // SECOND * SECOND + 2 * SECOND
    wait_until(lambda: resumed in cluster.runs(), timeout=20, message="ticks resume")
    during = sorted(t for t in cluster.runs() if killed_at < t <= back_at)
    assert len(during) == catch_up, (during, killed_at, back_at, cluster.logs())
    if catch_up:
        assert during == [back_at // SECOND * SECOND]  # the latest missed tick
    after = sorted(t for t in cluster.runs() if back_at < t)
    assert after == [after[0] + i * SECOND for i in range(len(after))]  # on time again
    assert all(len(ids) == 1 for ids in cluster.runs().values())
