"""A worker crash is charged only to a job that was running alone in its worker.

The rule itself (``rescue_orphan``), the worker's gate (a run_alone job runs
with nothing beside it, and nothing starts while it runs), and old records
without the field. Real crashes are in ``tests/crash/test_poison_neighbour.py``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import backrun
from backrun.jobs import WORKER_CRASHED, WORKER_CRASHED_UNCHARGED, Job, JobState, new_job_id
from backrun.serialization import job_to_dict, load_job
from backrun.supervisor import rescue_orphan
from backrun.testing import FakeClock, wait_until
from tests.conftest import Numbers

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)


def orphan(**changes: object) -> Job:
    fields: dict[str, object] = {
        "id": new_job_id(),
        "handler": "h",
        "payload": {},
        "state": JobState.RUNNING,
        "attempts": 1,
        "max_attempts": 4,
        "run_at": T0,
        "created_at": T0,
        "started_at": T0 + timedelta(minutes=1),
        "worker_id": "w-dead",
        "lease_expires_at": T0 + timedelta(minutes=2),
        "claim_token": "tok",
    }
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


# -- the rule -------------------------------------------------------------------


def test_a_crash_beside_others_is_not_charged_and_the_job_runs_next_alone() -> None:
    rescued = rescue_orphan(orphan(attempts=3), now=NOW, max_crashes=1)
    assert rescued.state is JobState.QUEUED
    assert rescued.run_alone
    assert rescued.attempts == 2  # the attempt is given back
    assert rescued.run_at == T0  # its place in the queue, not the back of it
    assert rescued.started_at is None
    assert [e.type for e in rescued.errors] == [WORKER_CRASHED_UNCHARGED]
    assert "w-dead" in rescued.errors[0].message


def test_uncharged_crashes_never_add_up_to_max_crashes() -> None:
    job = orphan()
    for _ in range(10):
        job = rescue_orphan(job, now=NOW, max_crashes=2).replace(
            state=JobState.RUNNING, attempts=job.attempts, run_alone=False
        )
    assert job.state is JobState.RUNNING
    assert [e.type for e in job.errors] == [WORKER_CRASHED_UNCHARGED] * 10


def test_a_crash_while_running_alone_is_charged_up_to_max_crashes() -> None:
    job = orphan(run_alone=True)
    first = rescue_orphan(job, now=NOW, max_crashes=2)
    assert (first.state, first.attempts, first.run_at) == (JobState.QUEUED, 1, T0)
    assert [e.type for e in first.errors] == [WORKER_CRASHED]
    second = rescue_orphan(
        first.replace(state=JobState.RUNNING, attempts=2), now=NOW, max_crashes=2
    )
    assert second.state is JobState.DEAD
    assert second.finished_at == NOW
    assert [e.type for e in second.errors] == [WORKER_CRASHED] * 2


def test_a_cancelled_orphan_ends_cancelled_either_way() -> None:
    for alone in (False, True):
        rescued = rescue_orphan(
            orphan(cancel_requested=True, run_alone=alone), now=NOW, max_crashes=3
        )
        assert rescued.state is JobState.CANCELLED


def test_records_written_before_run_alone_existed_load_with_it_false() -> None:
    job = orphan(run_alone=True)
    data = job_to_dict(job)
    assert data["run_alone"] is True
    del data["run_alone"]
    import orjson

    assert load_job(orjson.dumps(data)).run_alone is False


# -- the worker's gate ----------------------------------------------------------


class Timeline:
    """Start and end times of each job's attempts, and the peak overlap per job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: set[int] = set()
        self.beside: dict[int, set[int]] = {}  # job -> jobs that ran at the same time
        self.order: list[str] = []

    def enter(self, n: int) -> None:
        with self.lock:
            for other in self.active:
                self.beside.setdefault(other, set()).add(n)
                self.beside.setdefault(n, set()).add(other)
            self.active.add(n)
            self.order.append(f"start {n}")

    def leave(self, n: int) -> None:
        with self.lock:
            self.active.discard(n)
            self.order.append(f"end {n}")


def alone_job(engine: backrun.Engine, name: str, n: int) -> Job:
    now = engine.clock.now()
    job = Job(
        id=new_job_id(), handler=name, payload={"a": n}, run_at=now, created_at=now, run_alone=True
    )
    engine.storage.add(job)
    return job


def test_a_run_alone_job_waits_for_its_neighbours_and_nothing_starts_beside_it(
    clock: FakeClock,
) -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[], threads=4)
    timeline = Timeline()
    release = threading.Event()

    @engine.handler(name="work")
    def work(payload: Numbers) -> None:
        timeline.enter(payload.a)
        if payload.a < 10:
            release.wait(10)  # the neighbours: held until the test lets them go
        else:
            time.sleep(0.05)  # long enough for a neighbour to start, if one could
        timeline.leave(payload.a)

    for n in range(3):
        engine.enqueue(work, {"a": n})
    with engine.running() as worker:
        wait_until(lambda: worker.running_count == 3, message="three neighbours running")
        lonely = alone_job(engine, "work", 10)
        worker.wake_all()
        # The free slot claims it, sees neighbours in flight, gives it back uncharged.
        wait_until(lambda: worker._gate.wanted, message="the run_alone job claimed and refused")
        wait_until(
            lambda: engine.get(lonely.id).state is JobState.QUEUED,  # type: ignore[union-attr]
            message="the run_alone job given back",
        )
        given_back = engine.get(lonely.id)
        assert given_back is not None
        assert (given_back.state, given_back.attempts) == (JobState.QUEUED, 0)
        assert given_back.run_at == lonely.run_at
        later = engine.enqueue(work, {"a": 20})  # must wait: the worker is draining
        release.set()
        wait_until(lambda: worker.processed == 5, message="every job done")
    assert timeline.beside.get(10, set()) == set()
    assert timeline.order.index("start 10") > max(
        timeline.order.index(f"end {n}") for n in range(3)
    )
    assert timeline.order.index("start 20") > timeline.order.index("end 10")
    done = engine.get(later.id)
    assert done is not None
    assert done.state is JobState.SUCCEEDED
    lone = engine.get(lonely.id)
    assert lone is not None
    assert (lone.state, lone.attempts) == (JobState.SUCCEEDED, 1)


def test_several_run_alone_jobs_among_others_all_run_each_by_itself(clock: FakeClock) -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[], threads=4)
    timeline = Timeline()

    @engine.handler(name="work")
    def work(payload: Numbers) -> None:
        timeline.enter(payload.a)
        time.sleep(0.002)
        timeline.leave(payload.a)

    alone = [alone_job(engine, "work", 100 + n) for n in range(8)]
    for n in range(40):
        engine.enqueue(work, {"a": n})
        if n % 5 == 0:
            alone.append(alone_job(engine, "work", 200 + n))  # interleaved with the others
    assert engine.run_until_idle(timeout=30) == 56
    for job in alone:
        assert timeline.beside.get(job.payload["a"], set()) == set(), job.payload
        stored = engine.get(job.id)
        assert stored is not None
        assert stored.state is JobState.SUCCEEDED
    assert engine.counts() == {("default", JobState.SUCCEEDED): 56}
