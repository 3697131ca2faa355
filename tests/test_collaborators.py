"""Worker, Supervisor and AttemptRecorder meet through narrow, explicit interfaces.

Each collaborator is built here from small fakes, with no Worker and no
Engine: if one starts reaching into another again, these stop compiling
(mypy) or stop running.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import backrun
from backrun.attempts import Attempt, AttemptRecorder, Slot
from backrun.clock import Clock
from backrun.context import EngineHandle, JobContext
from backrun.handlers import HandlerRegistry, HandlerSpec
from backrun.jobs import Job, JobState
from backrun.middleware import Middleware, WorkerHandle
from backrun.retries import RetryPolicy
from backrun.storage.memory import MemoryStorage
from backrun.supervisor import OutcomeWriter, SupervisedPool, Supervisor
from backrun.testing import FakeClock, wait_until
from tests.storage.factories import LEASE, T0, make_job


class FakePool:
    """A worker as the supervisor sees it, and nothing more."""

    def __init__(self) -> None:
        self.stopping = False
        self.forced = False
        self.attempts: list[Attempt] = []
        self.abandoned: list[Attempt] = []

    @property
    def running_count(self) -> int:
        return len(self.attempts)

    def running_attempts(self) -> list[Attempt]:
        return list(self.attempts)

    def abandon(self, attempt: Attempt) -> None:
        self.abandoned.append(attempt)
        self.attempts.remove(attempt)


class FakeRecorder:
    def __init__(self) -> None:
        self.recovered: list[Job] = []
        self.finished: list[tuple[Attempt, BaseException | None]] = []

    def policy_for(self, job: Job) -> RetryPolicy:
        return RetryPolicy(timeout=timedelta(seconds=1))

    def finish(
        self, attempt: Attempt, error: BaseException | None, patience: float | None = None
    ) -> bool:
        self.finished.append((attempt, error))
        return True

    def orphan_recovered(self, job: Job) -> None:
        self.recovered.append(job)


def test_the_supervisor_runs_on_a_fake_pool_and_recorder() -> None:
    store, clock = MemoryStorage(), FakeClock(T0)
    pool: SupervisedPool = FakePool()
    recorder: OutcomeWriter = FakeRecorder()
    orphan = make_job()
    store.add(orphan)
    store.claim(queues=None, limit=1, now=T0, worker_id="w-gone", lease=LEASE)
    supervisor = Supervisor(
        pool,
        recorder,
        storage=store,
        clock=clock,
        worker_id="w-live",
        lease=LEASE,
        recovery_interval=60.0,
        max_crashes=3,
    )
    assert isinstance(pool, FakePool)
    assert isinstance(recorder, FakeRecorder)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    try:
        assert supervisor.first_round_done.wait(10)
        assert [j.id for j in recorder.recovered] == [orphan.id]
        rescued = store.get(orphan.id)
        assert rescued is not None
        assert rescued.state is JobState.QUEUED
    finally:
        pool.stopping = True
        supervisor.wake()
        thread.join(10)
    assert not thread.is_alive()


class FakeEngine:
    """An EngineHandle: what an attempt's context may use of an engine."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @property
    def clock(self) -> Clock:
        return self._clock

    def enqueue(self, handler: object, payload: object = None, **options: object) -> Job:
        raise NotImplementedError

    def get(self, job_id: str) -> Job | None:
        return None

    def cancel(self, job_id: str) -> Job:
        raise NotImplementedError


def test_the_recorder_needs_no_worker_and_records_through_the_claim() -> None:
    store, clock = MemoryStorage(), FakeClock(T0)
    registry = HandlerRegistry()
    calls: list[int] = []

    def double(payload: dict[str, int]) -> None:
        calls.append(payload["n"] * 2)

    spec: HandlerSpec = registry.add_function(double, name="tests.noop", retry=None, queue=None)
    assert spec.name == "tests.noop"
    engine = backrun.Engine(store, clock=clock)  # only as the contexts' EngineHandle
    handle: EngineHandle = engine
    recorder = AttemptRecorder(
        engine=handle,
        storage=store,
        clock=clock,
        handlers=registry,
        default_policy=RetryPolicy(),
        worker_id="w-1",
        middleware=[],
        forced=lambda: False,
    )
    store.add(make_job(payload={"n": 21}))
    (job,) = store.claim(queues=None, limit=1, now=T0, worker_id="w-1", lease=LEASE)
    slot = Slot()
    attempt = recorder.begin(job, slot)
    assert attempt.slot is slot
    assert attempt.ctx.worker_id == "w-1"
    error = recorder.execute(attempt, recorder.invoke)
    assert error is None
    assert calls == [42]
    assert attempt.settle()
    assert recorder.finish(attempt, error)
    done = store.get(job.id)
    assert done is not None
    assert done.state is JobState.SUCCEEDED
    engine.close()


def test_a_recorder_that_gives_up_reports_false_and_writes_no_fake_job() -> None:
    class Refusing(MemoryStorage):
        def update(self, job: Job) -> None:
            raise backrun.StorageError("disk full")

    store, clock = Refusing(), FakeClock(T0)
    recorder = AttemptRecorder(
        engine=FakeEngine(clock),
        storage=store,
        clock=clock,
        handlers=HandlerRegistry(),
        default_policy=RetryPolicy(),
        worker_id="w-1",
        middleware=[],
        forced=lambda: True,  # forced: the first refusal gives up
    )
    store.add(make_job())
    (job,) = store.claim(queues=None, limit=1, now=T0, worker_id="w-1", lease=LEASE)
    attempt = recorder.begin(job, None)
    assert attempt.settle()
    assert recorder.finish(attempt, None) is False


def test_a_context_takes_any_engine_handle() -> None:
    clock = FakeClock(T0)
    ctx = JobContext(make_job(), 1, "w", None, FakeEngine(clock))
    assert ctx.engine.clock.now() == T0


def test_middleware_hooks_see_a_worker_handle_only() -> None:
    seen: list[WorkerHandle] = []

    class Watch(Middleware):
        def worker_started(self, worker: WorkerHandle) -> None:
            seen.append(worker)

    engine = backrun.Engine(MemoryStorage(), middleware=[Watch()])
    try:
        with engine.running() as worker:
            wait_until(lambda: seen, message="worker_started")
            assert seen == [worker]
    finally:
        engine.close()


def test_the_worker_keeps_its_plumbing_private() -> None:
    engine = backrun.Engine(MemoryStorage())
    try:
        with engine.running() as worker:
            for plumbing in (
                "recorder",
                "abandon",
                "running_attempts",
                "clear_supervisor_wake",
                "wait_for_supervisor_work",
                "store_changed",
                "first_round_done",
                "scheduler",
                "publish_info",
            ):
                assert not hasattr(worker, plumbing), plumbing
            # What users and middleware use is still there.
            for public in ("id", "running_count", "processed", "stop", "wake", "cancel_local"):
                assert hasattr(worker, public), public
    finally:
        engine.close()
