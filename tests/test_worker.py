"""The worker: exactly-once, parallelism, retries, timeouts, cancellation, shutdown."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import tenacity

import backrun
from backrun.jobs import WORKER_CRASHED, WORKER_CRASHED_UNCHARGED, JobState
from backrun.supervisor import rescue_orphan
from backrun.testing import FakeClock, wait_until
from tests.conftest import Numbers


def test_a_thousand_jobs_run_exactly_once(engine: backrun.Engine) -> None:
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    @engine.handler
    def count(payload: Numbers) -> None:
        with lock:
            seen[payload.a] += 1

    for i in range(1000):
        engine.enqueue(count, {"a": i})
    assert engine.run_until_idle(timeout=60) == 1000
    assert seen == Counter(range(1000))
    assert engine.counts() == {("default", JobState.SUCCEEDED): 1000}


@pytest.mark.parametrize("limit", [1, 3])
def test_parallelism_reaches_but_never_exceeds_the_limit(clock: FakeClock, limit: int) -> None:
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[], threads=limit)
    lock = threading.Lock()
    active = 0
    peak = 0
    release = threading.Event()

    @engine.handler
    def busy(payload: Numbers) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        release.wait(10)
        with lock:
            active -= 1

    for i in range(limit * 4):
        engine.enqueue(busy, {"a": i})
    with engine.running() as worker:
        wait_until(lambda: worker.running_count == limit, message="all slots busy")
        release.set()
        wait_until(lambda: worker.processed == limit * 4, message="all jobs done")
    assert peak == limit


def test_middleware_wraps_in_order_and_hears_outcomes(engine: backrun.Engine) -> None:
    calls: list[str] = []

    class Layer(backrun.Middleware):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def enqueue(
            self, job: backrun.Job, call_next: backrun.middleware.EnqueueNext
        ) -> backrun.Job:
            calls.append(f"{self.tag}:enqueue")
            headers = {**job.headers, self.tag: "1"}
            return call_next(job.replace(headers=headers))

        def process(
            self, ctx: backrun.JobContext, call_next: backrun.middleware.ProcessNext
        ) -> None:
            calls.append(f"{self.tag}:before")
            try:
                call_next(ctx)
            finally:
                calls.append(f"{self.tag}:after")

        def attempt_finished(
            self, ctx: backrun.JobContext, job: backrun.Job, error: BaseException | None
        ) -> None:
            calls.append(f"{self.tag}:{job.state.value}")

    engine.add_middleware(Layer("outer"))
    engine.add_middleware(Layer("inner"))

    @engine.handler
    def work(payload: Numbers) -> None:
        calls.append("handler")

    job = engine.enqueue(work, {"a": 1})
    assert job.headers == {"outer": "1", "inner": "1"}
    engine.run_until_idle(timeout=10)
    assert calls == [
        "outer:enqueue",
        "inner:enqueue",
        "outer:before",
        "inner:before",
        "handler",
        "inner:after",
        "outer:after",
        "outer:succeeded",
        "inner:succeeded",
    ]


def test_delayed_jobs_never_run_early(engine: backrun.Engine, clock: FakeClock) -> None:
    started: list[object] = []

    @engine.handler
    def later(payload: Numbers, ctx: backrun.JobContext) -> None:
        started.append(engine.clock.now())

    job = engine.enqueue(later, {"a": 1}, delay=timedelta(seconds=30))
    with engine.running() as worker:
        clock.advance(timedelta(seconds=29.999))
        worker.wait_idle(timeout=10)
        assert started == []
        clock.advance(timedelta(milliseconds=1))
        wait_until(lambda: started, message="delayed job ran")
    assert started == [job.run_at]


def test_retries_are_persisted_reschedules_then_dead_with_every_error(
    engine: backrun.Engine, clock: FakeClock
) -> None:
    @engine.handler
    def flaky(payload: Numbers, ctx: backrun.JobContext) -> None:
        raise ValueError(f"attempt {ctx.attempt} failed")

    job = engine.enqueue(flaky, {"a": 1})
    for attempt in range(1, 4):
        engine.run_until_idle(timeout=10)
        stored = engine.get(job.id)
        assert stored is not None
        assert stored.state is JobState.SCHEDULED
        assert stored.attempts == attempt
        assert stored.run_at == clock.now() + timedelta(seconds=10)
        clock.advance(timedelta(seconds=10))
    engine.run_until_idle(timeout=10)
    dead = engine.get(job.id)
    assert dead is not None
    assert dead.state is JobState.DEAD
    assert [e.message for e in dead.errors] == [f"attempt {n} failed" for n in range(1, 5)]
    assert {e.type for e in dead.errors} == {"ValueError"}
    assert "Traceback" in dead.errors[0].traceback
    assert [e.attempt for e in dead.errors] == [1, 2, 3, 4]
    engine.retry(job.id)
    engine.run_until_idle(timeout=10)
    again = engine.get(job.id)
    assert again is not None
    assert len(again.errors) == 5


def test_retry_on_limits_which_errors_retry(clock: FakeClock) -> None:
    policy = backrun.RetryPolicy(max_retries=5, retry_on=ConnectionError, wait=tenacity.wait_none())
    engine = backrun.Engine(backrun.MemoryStorage(), clock=clock, middleware=[], retry=policy)
    errors = iter([ConnectionError("net"), KeyError("k")])

    @engine.handler
    def work(payload: Numbers) -> None:
        raise next(errors)

    job = engine.enqueue(work, {"a": 1})
    engine.run_until_idle(timeout=10)
    stored = engine.get(job.id)
    assert stored is not None
    assert stored.state is JobState.DEAD
    assert [e.type for e in stored.errors] == ["ConnectionError", "KeyError"]


def test_do_not_retry_goes_dead_at_once(engine: backrun.Engine) -> None:
    @engine.handler
    def refuse(payload: Numbers) -> None:
        raise backrun.DoNotRetry("bad input")

    job = engine.enqueue(refuse, {"a": 1})
    engine.run_until_idle(timeout=10)
    stored = engine.get(job.id)
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.DEAD, 1)


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_system_exit_fails_the_job_not_the_worker(
    engine: backrun.Engine, exc: BaseException
) -> None:
    ran: list[int] = []

    @engine.handler(name="exits")
    def exits(payload: Numbers) -> None:
        raise exc

    @engine.handler(name="fine")
    def fine(payload: Numbers) -> None:
        ran.append(payload.a)

    bad = engine.enqueue(exits, {"a": 0})
    engine.enqueue(fine, {"a": 1}, priority=-1)
    engine.run_until_idle(timeout=10)
    stored = engine.get(bad.id)
    assert stored is not None
    assert stored.state is JobState.SCHEDULED
    assert stored.errors[0].type == type(exc).__name__
    assert ran == [1]


def test_a_hung_handler_times_out_while_other_slots_keep_working(clock: FakeClock) -> None:
    policy = backrun.RetryPolicy(
        max_retries=1, timeout=timedelta(minutes=15), wait=tenacity.wait_fixed(60)
    )
    engine = backrun.Engine(
        backrun.MemoryStorage(), clock=clock, middleware=[], threads=2, retry=policy
    )
    hung_ctx: list[backrun.JobContext] = []
    unblock = threading.Event()
    done: list[int] = []

    @engine.handler(name="hang")
    def hang(payload: Numbers, ctx: backrun.JobContext) -> None:
        hung_ctx.append(ctx)
        unblock.wait(30)  # ignores ctx.cancelled on purpose: a truly stuck handler

    @engine.handler(name="quick")
    def quick(payload: Numbers) -> None:
        done.append(payload.a)

    hung = engine.enqueue(hang, {"a": 0}, priority=10)
    with engine.running() as worker:
        wait_until(lambda: hung_ctx, message="hung handler started")
        for i in range(20):
            engine.enqueue(quick, {"a": i})
        wait_until(lambda: len(done) == 20, message="other slot kept working")
        clock.advance(timedelta(minutes=15))
        wait_until(lambda: worker.stuck_threads == 1, message="stuck thread counted")
        assert hung_ctx[0].cancelled.is_set()
        wait_until(
            lambda: engine.get(hung.id).state is JobState.SCHEDULED,  # type: ignore[union-attr]
            message="timeout recorded as a failed attempt",
        )
        stored = engine.get(hung.id)
        assert stored is not None
        assert stored.state is JobState.SCHEDULED
        assert stored.errors[-1].type == "backrun.errors.JobTimeout"
        for i in range(20, 40):
            engine.enqueue(quick, {"a": i})
        wait_until(lambda: len(done) == 40, message="replacement slots run jobs")
        assert worker.running_count == 0
        unblock.set()
        wait_until(lambda: worker.stuck_threads == 0, message="stuck thread exited")
    stored = engine.get(hung.id)
    assert stored is not None
    assert stored.state is JobState.SCHEDULED  # the late return was discarded
    assert stored.attempts == 1


def test_cancelling_a_running_job_sets_its_event(engine: backrun.Engine) -> None:
    started = threading.Event()

    @engine.handler
    def patient(payload: Numbers, ctx: backrun.JobContext) -> None:
        started.set()
        if ctx.cancelled.wait(10):
            raise RuntimeError("stopped on request")

    job = engine.enqueue(patient, {"a": 1})
    with engine.running():
        assert started.wait(10)
        engine.cancel(job.id)
        wait_until(lambda: engine.get(job.id).state is JobState.CANCELLED)  # type: ignore[union-attr]


def test_graceful_shutdown_waits_then_releases_without_charging(clock: FakeClock) -> None:
    engine = backrun.Engine(
        backrun.MemoryStorage(), clock=clock, middleware=[], shutdown_timeout=0.2
    )
    started = threading.Event()
    finish_quickly = threading.Event()

    @engine.handler(name="slow")
    def slow(payload: Numbers, ctx: backrun.JobContext) -> None:
        started.set()
        ctx.cancelled.wait(30)

    @engine.handler(name="short")
    def short(payload: Numbers) -> None:
        finish_quickly.wait(30)

    slow_job = engine.enqueue(slow, {"a": 1})
    with engine.running() as worker:
        assert started.wait(10)
        short_job = engine.enqueue(short, {"a": 2})
        wait_until(lambda: worker.running_count == 2)
        finish_quickly.set()
        wait_until(lambda: worker.processed == 1, message="short job done")
    assert engine.get(short_job.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    released = engine.get(slow_job.id)
    assert released is not None
    assert (released.state, released.attempts) == (JobState.QUEUED, 0)


def test_orphans_of_dead_workers_are_rescued_and_poison_goes_dead(
    engine: backrun.Engine,
) -> None:
    ran: list[int] = []

    @engine.handler
    def work(payload: Numbers) -> None:
        ran.append(payload.a)

    storage = engine.storage
    survivor = engine.enqueue(work, {"a": 1})
    poison = engine.enqueue(work, {"a": 2}, priority=-1)
    now = engine.clock.now()
    lease = timedelta(seconds=60)
    storage.claim(queues=None, limit=1, now=now, worker_id="dead-1", lease=lease)
    # The poison job died beside another once (not charged: it now runs alone),
    # then killed two workers alone; a third death alone makes it DEAD.
    for n in range(4):
        (claimed,) = storage.claim(queues=None, limit=1, now=now, worker_id=f"x{n}", lease=lease)
        if n < 3:
            storage.update(rescue_orphan(claimed, now=now, max_crashes=3))
    engine.run_until_idle(timeout=10)
    assert ran == [1]
    rescued = engine.get(survivor.id)
    dead = engine.get(poison.id)
    assert rescued is not None
    assert dead is not None
    assert rescued.state is JobState.SUCCEEDED
    assert rescued.attempts == 1  # the crash beside others was given back
    assert [e.type for e in rescued.errors] == [WORKER_CRASHED_UNCHARGED]
    assert dead.state is JobState.DEAD
    assert [e.type for e in dead.errors] == [WORKER_CRASHED_UNCHARGED] + [WORKER_CRASHED] * 3
    assert "crashed worker" in dead.errors[-1].message


def test_a_job_for_an_unregistered_handler_goes_dead_without_running(
    engine: backrun.Engine,
) -> None:
    from backrun.jobs import Job, new_job_id

    job = Job(
        id=new_job_id(),
        handler="os.system",
        payload={"command": "false"},
        run_at=engine.clock.now(),
        created_at=engine.clock.now(),
    )
    engine.storage.add(job)
    engine.run_until_idle(timeout=10)
    stored = engine.get(job.id)
    assert stored is not None
    assert stored.state is JobState.DEAD
    assert stored.errors[0].type == "backrun.errors.UnknownHandler"


def test_current_job_inside_a_handler(engine: backrun.Engine) -> None:
    seen: list[str | None] = []

    @engine.handler
    def who(payload: Numbers) -> None:
        ctx = backrun.current_job()
        seen.append(ctx.job.id if ctx else None)

    job = engine.enqueue(who, {"a": 1})
    engine.run_until_idle(timeout=10)
    assert seen == [job.id]
    assert backrun.current_job() is None


def test_run_until_idle_times_out_on_endless_work(engine: backrun.Engine) -> None:
    @engine.handler
    def again(payload: Numbers) -> None:
        engine.enqueue(again, {"a": payload.a + 1})

    engine.enqueue(again, {"a": 0})
    with pytest.raises(TimeoutError):
        engine.run_until_idle(timeout=0.5)


def test_a_short_timeout_is_enforced_promptly_with_the_real_clock() -> None:
    import time

    policy = backrun.RetryPolicy(max_retries=0, timeout=timedelta(milliseconds=100))
    engine = backrun.Engine(
        backrun.MemoryStorage(), middleware=[], retry=policy, recovery_interval=30.0
    )
    release = threading.Event()

    @engine.handler
    def stuck(payload: Numbers) -> None:
        release.wait(30)

    with engine.running() as worker:
        wait_until(lambda: worker.processed == 0 and worker.running_count == 0)
        started = time.monotonic()
        job = engine.enqueue(stuck, {"a": 1})
        wait_until(lambda: engine.get(job.id).state is JobState.DEAD, timeout=10)  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
        release.set()
    assert elapsed < 3.0, f"a 100 ms timeout took {elapsed:.1f} s to enforce"
