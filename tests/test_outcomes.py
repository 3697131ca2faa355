"""How attempts end: cancels from elsewhere, handlers that return after a cancel,
stored payloads that no longer validate, and run_until_idle's idle test."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import backrun
from backrun.errors import LeaseLost
from backrun.jobs import Job, JobState, new_job_id
from backrun.testing import FakeClock, wait_until
from tests.conftest import Numbers


def test_a_cancel_made_by_another_engine_reaches_the_handler_within_a_second(
    clock: FakeClock,
) -> None:
    store = backrun.MemoryStorage()
    # A 60 s lease heartbeats every 20 s: only the store's notification can be this quick.
    runner = backrun.Engine(store, clock=clock, middleware=[], lease=timedelta(seconds=60))
    other = backrun.Engine(store, clock=clock, middleware=[])
    started = threading.Event()
    seen_at: list[float] = []

    @runner.handler(name="patient")
    def patient(payload: Numbers, ctx: backrun.JobContext) -> None:
        started.set()
        if ctx.cancelled.wait(10):
            seen_at.append(time.monotonic())

    job = runner.enqueue(patient, {"a": 1})
    with runner.running():
        assert started.wait(10)
        asked_at = time.monotonic()
        other.cancel(job.id)
        deadline = time.monotonic() + 5
        while runner.get(job.id).state is JobState.RUNNING and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
    assert seen_at, "the handler never saw ctx.cancelled"
    assert seen_at[0] - asked_at < 1.0
    stored = runner.get(job.id)
    assert stored is not None
    assert stored.state is JobState.CANCELLED


def test_a_handler_that_returns_after_its_cancel_ends_cancelled(engine: backrun.Engine) -> None:
    started = threading.Event()

    @engine.handler
    def polite(payload: Numbers, ctx: backrun.JobContext) -> None:
        started.set()
        ctx.cancelled.wait(10)  # then returns normally, work undone

    job = engine.enqueue(polite, {"a": 1})
    with engine.running() as worker:
        assert started.wait(10)
        engine.cancel(job.id)
        deadline = time.monotonic() + 10
        while worker.processed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    stored = engine.get(job.id)
    assert stored is not None
    assert stored.state is JobState.CANCELLED
    assert stored.errors == ()  # it raised nothing


def test_a_stored_payload_that_no_longer_validates_goes_dead_at_once(
    engine: backrun.Engine,
) -> None:
    calls: list[int] = []

    @engine.handler(name="typed")
    def typed(payload: Numbers) -> None:
        calls.append(payload.a)

    now = engine.clock.now()
    job = Job(
        id=new_job_id(), handler="typed", payload={"a": "not a number"}, run_at=now, created_at=now
    )
    engine.storage.add(job)  # as a payload model change, or a hand-edited file, leaves it
    assert engine.run_until_idle(timeout=10) == 1
    stored = engine.get(job.id)
    assert stored is not None
    assert calls == []
    assert (stored.state, stored.attempts) == (JobState.DEAD, 1)
    assert stored.last_error is not None
    assert "validation error" in stored.last_error.message
    assert "ValidationError" in stored.last_error.traceback


class DroppingStorage(backrun.MemoryStorage):
    """Refuses the first outcome write of one job as a lost claim, writing nothing.

    This is what the JSON store's same-process rename race did: the job stayed
    RUNNING under a live worker that believed it finished.
    """

    def __init__(self) -> None:
        super().__init__()
        self.victim: str | None = None

    def update(self, job: Job) -> None:
        if job.id == self.victim and job.state is not JobState.RUNNING:
            self.victim = None
            raise LeaseLost("dropped, as the race did")
        super().update(job)


def test_run_until_idle_never_returns_while_a_job_of_its_worker_is_running(
    clock: FakeClock,
) -> None:
    store = DroppingStorage()
    engine = backrun.Engine(store, clock=clock, middleware=[])

    @engine.handler(name="quick")
    def quick(payload: Numbers) -> None:
        pass

    job = engine.enqueue(quick, {"a": 1})
    store.victim = job.id
    with pytest.raises(TimeoutError, match="running"):
        engine.run_until_idle(timeout=1.0)
    stored = engine.get(job.id)
    assert stored is not None
    # Released by the stop that follows the timeout, or left for orphan recovery:
    # never reported idle while RUNNING.
    assert stored.state in (JobState.RUNNING, JobState.QUEUED)


class SlowOutcomeStorage(backrun.MemoryStorage):
    """Holds the write that ends a RUNNING job until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.let_through = threading.Event()

    def update(self, job: Job) -> None:
        if job.state is not JobState.RUNNING:
            self.writing.set()
            self.let_through.wait(10)
        super().update(job)


def test_the_idle_test_waits_for_a_timed_out_attempt_to_be_recorded(clock: FakeClock) -> None:
    store = SlowOutcomeStorage()
    retry = backrun.RetryPolicy(max_retries=0, timeout=timedelta(seconds=5))
    engine = backrun.Engine(store, clock=clock, middleware=[], retry=retry)
    started, unstick = threading.Event(), threading.Event()

    @engine.handler(name="stuck")
    def stuck(payload: Numbers) -> None:
        started.set()
        unstick.wait(10)

    job = engine.enqueue(stuck, {"a": 1})
    with engine.running() as worker:
        idle: list[int] = []
        waiter = threading.Thread(target=lambda: idle.append(worker.wait_idle(10)))
        try:
            assert started.wait(10)
            wait_until(worker._supervisor.first_round_done.is_set, message="first supervisor round")
            waiter.start()
            clock.advance(timedelta(seconds=6))  # past the deadline: the supervisor times it out
            assert store.writing.wait(10)  # its thread is abandoned; the record is being written
            waiter.join(0.3)  # the old idle test returned here, the job still RUNNING
            assert waiter.is_alive()
            assert engine.get(job.id).state is JobState.RUNNING  # type: ignore[union-attr]
            store.let_through.set()
            waiter.join(10)
            assert len(idle) == 1  # returned, once the record landed
            assert engine.get(job.id).state is JobState.DEAD  # type: ignore[union-attr]
        finally:
            store.let_through.set()
            unstick.set()
            if waiter.is_alive():
                waiter.join(10)
