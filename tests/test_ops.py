"""Live workers and paused queues through the engine, in-process and across processes."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import backrun
from backrun.observability.queue_collector import QueueCollector
from tests.cli.procs import Proc
from tests.helpers import wait_until
from tests.storage.postgres_support import drop_schema, postgres_dsn, require_postgres

RECOVERY = 0.5


def memory_engine() -> backrun.Engine:
    return backrun.Engine(backrun.MemoryStorage(), middleware=[], recovery_interval=RECOVERY)


def test_workers_shows_this_process_worker_and_what_it_runs() -> None:
    engine = memory_engine()
    release = threading.Event()

    @engine.handler(name="hold")
    def hold(payload: dict[str, int]) -> None:
        release.wait(10)

    job = engine.enqueue("hold", {})
    with engine.running(queues=["default"]) as worker:
        wait_until(
            lambda: [w.running for w in engine.workers()] == [(job.id,)],
            what="the worker's record to name the running job",
        )
        (info,) = engine.workers()
        assert info.id == worker.id
        assert info.queues == ("default",)
        assert info.max_parallelism == engine.threads
        assert info.started_at <= info.last_seen
        assert isinstance(info, backrun.WorkerInfo)
        release.set()
        wait_until(lambda: engine.workers()[0].running == (), what="the job to leave the record")
    assert engine.workers() == []


def test_a_paused_queue_is_not_run_but_others_are_and_resume_runs_it() -> None:
    engine = memory_engine()
    ran: list[str] = []

    @engine.handler(name="note")
    def note(payload: dict[str, str]) -> None:
        ran.append(payload["q"])

    assert engine.pause("mail") is True
    assert engine.paused() == frozenset({"mail"})
    engine.enqueue("note", {"q": "mail"}, queue="mail", priority=10)
    engine.enqueue("note", {"q": "default"})
    # Returns once nothing claimable is due: the paused queue's job does not hold it up.
    engine.run_until_idle(timeout=5)
    assert ran == ["default"]
    assert engine.counts()[("mail", backrun.JobState.QUEUED)] == 1
    with engine.running():
        assert engine.resume("mail") is True
        wait_until(lambda: ran == ["default", "mail"], what="the resumed queue's job")


def test_a_running_job_finishes_when_its_queue_is_paused() -> None:
    engine = memory_engine()
    started, release = threading.Event(), threading.Event()

    @engine.handler(name="hold")
    def hold(payload: dict[str, int]) -> None:
        started.set()
        release.wait(10)

    job = engine.enqueue("hold", {})
    with engine.running():
        assert started.wait(5)
        engine.pause("default")
        release.set()
        wait_until(
            lambda: engine.get(job.id).state is backrun.JobState.SUCCEEDED,  # type: ignore[union-attr]
            what="the running job to finish",
        )


def test_pause_refuses_a_bad_queue_name() -> None:
    with pytest.raises(ValueError, match="queue names"):
        memory_engine().pause("<script>")


def test_the_paused_gauge_reports_each_queue() -> None:
    engine = memory_engine()
    engine.handler(name="n")(lambda payload: None)
    engine.enqueue("n", {}, queue="mail")
    engine.enqueue("n", {}, queue="default")
    engine.pause("mail")
    engine.pause("idle")
    registry = CollectorRegistry()
    collector = QueueCollector()
    collector.add(engine.storage)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'backrun_queue_paused{queue="mail"} 1.0' in text
    assert 'backrun_queue_paused{queue="idle"} 1.0' in text
    assert 'backrun_queue_paused{queue="default"} 0.0' in text


# -- across processes ----------------------------------------------------------------


@pytest.fixture(params=["jsonfile", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a worker process and an engine of this process on the same store."""
    if request.param == "postgres":
        require_postgres()
        schema = f"backrun_ops_{int(time.time() * 1000) % 10**9}"
        store = backrun.PostgresStorage(postgres_dsn(), schema=schema, pool_size=2)
        store.migrate()
        store.close()
        try:
            yield {"OPS_PG_SCHEMA": schema, "OPS_RECOVERY": str(RECOVERY)}
        finally:
            drop_schema(schema)
    else:
        path = tmp_path / "store"
        backrun.JsonFileStorage(path, fsync=False).close()
        yield {"OPS_STORE": str(path), "OPS_RECOVERY": str(RECOVERY)}


def engine_for(env: dict[str, str]) -> backrun.Engine:
    if "OPS_PG_SCHEMA" in env:
        storage: backrun.Storage = backrun.PostgresStorage(
            postgres_dsn(), schema=env["OPS_PG_SCHEMA"], pool_size=2
        )
    else:
        storage = backrun.JsonFileStorage(env["OPS_STORE"], fsync=False)
    return backrun.Engine(storage, middleware=[], recovery_interval=RECOVERY)


def start_worker(env: dict[str, str], tmp_path: Path) -> Proc:
    repo = Path(__file__).resolve().parents[1]
    return Proc(
        [sys.executable, "-m", "backrun", "worker", "tests.fixtures.opsapp:engine"],
        cwd=repo,
        env=env,
    )


def test_a_killed_worker_disappears_within_one_recovery_interval(
    shared: dict[str, str], tmp_path: Path
) -> None:
    engine = engine_for(shared)
    proc = start_worker(shared, tmp_path)
    try:
        seen: list[backrun.WorkerInfo] = []
        wait_until(
            lambda: seen.extend(engine.workers()) or seen, timeout=30, what="the worker's record"
        )
        assert seen[0].pid == proc.popen.pid
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)
        killed = time.monotonic()
        wait_until(lambda: engine.workers() == [], timeout=10, what="the dead worker to go")
        # One recovery interval, plus slack for this loop's own reads on a loaded machine.
        assert time.monotonic() - killed <= RECOVERY + 0.5
    finally:
        proc.kill()
        engine.close()


def test_a_pause_made_here_stops_a_worker_in_another_process(
    shared: dict[str, str], tmp_path: Path
) -> None:
    engine = engine_for(shared)
    for name in ("quick", "gated"):
        engine.handler(name=name)(lambda payload: None)  # names only: enqueue needs them
    proc = start_worker(shared, tmp_path)
    try:
        wait_until(lambda: len(engine.workers()) == 1, timeout=30, what="the worker to start")
        engine.pause("mail")
        paused_job = engine.enqueue("quick", {"text": "m"}, queue="mail", priority=100)
        other = engine.enqueue("quick", {"text": "d"})
        wait_until(
            lambda: engine.get(other.id).state is backrun.JobState.SUCCEEDED,  # type: ignore[union-attr]
            timeout=15,
            what="the unpaused queue's job",
        )
        assert engine.get(paused_job.id).state is backrun.JobState.QUEUED  # type: ignore[union-attr]
        resumed = time.monotonic()
        engine.resume("mail")
        wait_until(
            lambda: engine.get(paused_job.id).state is backrun.JobState.SUCCEEDED,  # type: ignore[union-attr]
            timeout=15,
            what="the resumed queue's job",
        )
        poll = engine.storage.poll_interval or 1.0
        assert time.monotonic() - resumed <= poll + 1.0
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(20)
        engine.close()
