"""A Hypothesis state machine: the PostgreSQL store against a plain Python model.

Crashes are modelled as killed server connections: after one, any call may
fail with StorageError, and the model then demands that the failed call
changed nothing (the store must be atomic per call) before it is retried. A
worker crash additionally deletes the worker's row; its running jobs must then
be reported as orphans, and rescuing them must work exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from backrun.errors import JobNotFound, LeaseLost, StorageError
from backrun.jobs import Job, JobState, new_job_id
from backrun.storage.base import READY_STATES
from tests.storage.postgres_support import (
    postgres_store,
    require_postgres,
    terminate_backends,
)

pytestmark = pytest.mark.postgres

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)
WORKERS = ("w1", "w2")
R = TypeVar("R")


class PostgresModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store: Any = postgres_store(pool_size=2)
        self.now = T0
        self.jobs: dict[str, Job] = {}
        self.stale: list[Job] = []  # records carrying tokens of claims that ended
        self.live = set(WORKERS)
        for worker in WORKERS:
            self.store.register_worker(worker, now=self.now)

    def teardown(self) -> None:
        self.store.close()

    # -- helpers -------------------------------------------------------------

    def call(self, op: Callable[[], R]) -> R:
        """Run ``op``; if a killed connection fails it, check nothing changed and retry."""
        try:
            return op()
        except StorageError:
            self.check_store_matches_model()
            return op()

    def running(self, worker: str | None = None) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j.state is JobState.RUNNING and (worker is None or j.worker_id == worker)
        ]

    # -- rules ---------------------------------------------------------------

    @rule(
        count=st.integers(1, 3),
        priority=st.integers(-1, 1),
        delay=st.sampled_from([0, 0, 30]),
        queue=st.sampled_from(["default", "mail"]),
    )
    def add(self, count: int, priority: int, delay: int, queue: str) -> None:
        run_at = self.now + timedelta(seconds=delay)
        state = JobState.SCHEDULED if delay else JobState.QUEUED
        batch = [
            Job(
                id=new_job_id(),
                handler="h",
                payload={"i": i},
                queue=queue,
                priority=priority,
                run_at=run_at,
                created_at=self.now,
                state=state,
            )
            for i in range(count)
        ]
        self.call(lambda: self.store.add_many(batch))
        self.jobs.update((j.id, j) for j in batch)

    @rule(seconds=st.sampled_from([1, 31]))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(
        limit=st.integers(1, 4),
        worker=st.sampled_from(WORKERS),
        queues=st.sampled_from([None, ("mail",)]),
    )
    def claim(self, limit: int, worker: str, queues: tuple[str, ...] | None) -> None:
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j.state in READY_STATES
                and j.run_at is not None
                and j.run_at <= self.now
                and (queues is None or j.queue in queues)
            ),
            key=lambda j: (-j.priority, j.run_at, j.id),
        )
        got = self.call(
            lambda: self.store.claim(
                queues=queues, limit=limit, now=self.now, worker_id=worker, lease=LEASE
            )
        )
        assert [j.id for j in got] == [j.id for j in due[:limit]]
        for job in got:
            expected = self.jobs[job.id].replace(
                state=JobState.RUNNING,
                attempts=self.jobs[job.id].attempts + 1,
                worker_id=worker,
                started_at=self.now,
                lease_expires_at=self.now + LEASE,
                claim_token=job.claim_token,
            )
            assert job == expected
            assert job.claim_token
            self.jobs[job.id] = job

    @precondition(lambda self: bool(self.running()))
    @rule(
        pick=st.integers(0, 100),
        outcome=st.sampled_from([JobState.SUCCEEDED, JobState.DEAD, JobState.SCHEDULED]),
    )
    def finish(self, pick: int, outcome: JobState) -> None:
        running = self.running()
        job = running[pick % len(running)]
        if outcome is JobState.SCHEDULED:
            new = job.replace(state=outcome, run_at=self.now + timedelta(seconds=30))
        else:
            new = job.replace(state=outcome, finished_at=self.now)
        self.call(lambda: self.store.update(new))
        self.jobs[job.id] = new
        self.stale.append(job)

    @precondition(lambda self: bool(self.stale))
    @rule(pick=st.integers(0, 100))
    def stale_write_is_refused(self, pick: int) -> None:
        old = self.stale[pick % len(self.stale)]
        current = self.jobs[old.id]
        if current.state is JobState.RUNNING and current.claim_token == old.claim_token:
            return
        with pytest.raises(LeaseLost):
            self.call(lambda: self.store.update(old.replace(state=JobState.SUCCEEDED)))

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=st.integers(0, 1000), running=st.booleans())
    def cancel(self, pick: int, running: bool) -> None:
        pool = self.running() if running and self.running() else list(self.jobs.values())
        job = sorted(pool, key=lambda j: j.id)[pick % len(pool)]
        got = self.call(lambda: self.store.cancel(job.id, now=self.now))
        if job.state in READY_STATES:
            job = job.replace(state=JobState.CANCELLED, finished_at=self.now)
        elif job.state is JobState.RUNNING:
            job = job.replace(cancel_requested=True)
        assert got == job
        self.jobs[job.id] = job

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=st.integers(0, 1000))
    def requeue(self, pick: int) -> None:
        job = sorted(self.jobs.values(), key=lambda j: j.id)[pick % len(self.jobs)]
        if job.state in (JobState.DEAD, JobState.CANCELLED):
            expected = job.replace(
                state=JobState.QUEUED,
                attempts=0,
                run_at=self.now,
                finished_at=None,
                cancel_requested=False,
            )
        elif job.state is JobState.SCHEDULED:
            expected = job.replace(state=JobState.QUEUED, run_at=self.now)
        else:
            with pytest.raises(ValueError, match="cannot be retried"):
                self.call(lambda: self.store.requeue(job.id, now=self.now))
            return
        assert self.call(lambda: self.store.requeue(job.id, now=self.now)) == expected
        self.jobs[job.id] = expected

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        if worker not in self.live:
            return
        mine = self.running(worker)
        stop = self.call(
            lambda: self.store.heartbeat(
                mine, worker_id=worker, now=self.now, lease_until=self.now + LEASE
            )
        )
        assert stop == {j.id for j in mine if j.cancel_requested}
        for job in mine:
            self.jobs[job.id] = job.replace(lease_expires_at=self.now + LEASE)

    @rule()
    def kill_connections(self) -> None:
        terminate_backends(self.store.schema)

    @rule(worker=st.sampled_from(WORKERS))
    def worker_crashes_and_is_rescued(self, worker: str) -> None:
        terminate_backends(self.store.schema)
        self.call(lambda: self.store.unregister_worker(worker))
        self.live.discard(worker)
        orphans = self.call(lambda: self.store.orphans(now=self.now))
        expected = [j for w in WORKERS if w not in self.live for j in self.running(w)]
        assert sorted(orphans, key=lambda j: j.id) == sorted(expected, key=lambda j: j.id)
        for orphan in orphans:
            rescued = orphan.replace(state=JobState.QUEUED, run_at=self.now)
            self.call(lambda o=rescued: self.store.update(o))  # type: ignore[misc]
            with pytest.raises(LeaseLost):
                self.store.update(rescued)
            self.jobs[orphan.id] = rescued
            self.stale.append(orphan)
        self.call(lambda: self.store.register_worker(worker, now=self.now))
        self.live.add(worker)

    @rule()
    def unknown_job(self) -> None:
        missing = new_job_id()
        assert self.call(lambda: self.store.get(missing)) is None
        with pytest.raises(JobNotFound):
            self.call(lambda: self.store.cancel(missing, now=self.now))

    # -- invariants ------------------------------------------------------------

    @invariant()
    def check_store_matches_model(self) -> None:
        stored: list[Job] = []
        for attempt in range(2):
            try:
                stored = self.store.find(limit=10_000)
                break
            except StorageError:
                if attempt:
                    raise
        assert {j.id: j for j in stored} == self.jobs


def test_postgres_store_against_a_model() -> None:
    require_postgres()
    run: Any = PostgresModel.TestCase
    run.settings = settings(
        max_examples=30,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    run().runTest()
