"""How slots claim: a finish and the next claim in one store call; one claim for idle slots."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

import backrun
from backrun.jobs import Job, JobState
from backrun.limits import HandlerLimits, LimitedClaim
from backrun.storage.memory import MemoryStorage
from tests.conftest import Numbers
from tests.helpers import wait_until


class Counting(MemoryStorage):
    """Counts the combined calls (overriding only them keeps the store's fused path)."""

    def __init__(self) -> None:
        super().__init__()
        self.combined = 0

    def update_and_claim(
        self,
        job: Job,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
        limits: Mapping[str, HandlerLimits] | None = None,
    ) -> LimitedClaim:
        self.combined += 1
        return super().update_and_claim(
            job, queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease,
            limits=limits,
        )  # fmt: skip


class ClaimSizes(MemoryStorage):
    """Records the ``limit`` of every claim."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    def claim(
        self,
        *,
        queues: Collection[str] | None,
        limit: int,
        now: datetime,
        worker_id: str,
        lease: timedelta,
    ) -> list[Job]:
        self.limits.append(limit)
        return super().claim(queues=queues, limit=limit, now=now, worker_id=worker_id, lease=lease)


def test_a_slot_records_each_finish_and_claims_its_next_job_in_one_store_call() -> None:
    storage = Counting()
    engine = backrun.Engine(storage, threads=1)
    seen: list[int] = []

    @engine.handler(name="collect")
    def collect(payload: Numbers) -> None:
        seen.append(payload.a)

    jobs = engine.enqueue_many("collect", [{"a": i} for i in range(20)])
    assert engine.run_until_idle(timeout=30) == 20
    assert seen == list(range(20))  # one slot: in enqueue order
    assert storage.combined == 20  # every finish, the last one claiming nothing
    assert {storage.get(job.id).state for job in jobs} == {JobState.SUCCEEDED}  # type: ignore[union-attr]


def test_one_claim_feeds_every_idle_slot() -> None:
    storage = ClaimSizes()
    engine = backrun.Engine(storage, threads=4)
    barrier = threading.Barrier(4, timeout=20)

    @engine.handler(name="together")
    def together(payload: Numbers) -> None:
        barrier.wait()  # all four run at once, or this breaks

    with engine.running() as worker:
        wait_until(lambda: worker._idle == 4, what="the four slots to go idle")
        engine.enqueue_many("together", [{"a": i} for i in range(4)])
        wait_until(
            lambda: engine.counts().get(("default", JobState.SUCCEEDED)) == 4,
            what="the four jobs to succeed",
        )
    assert max(storage.limits) > 1  # a slot claimed for the idle ones too
    assert not barrier.broken


def test_a_job_claimed_for_an_idle_slot_is_given_back_unrun_at_a_stop() -> None:
    storage = MemoryStorage()
    engine = backrun.Engine(storage, threads=1)
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    @engine.handler(name="hold")
    def hold(payload: Numbers) -> None:
        ran.append(payload.a)
        started.set()
        release.wait(20)

    with engine.running() as worker:
        engine.enqueue("hold", {"a": 0})
        assert started.wait(20)
        later = engine.enqueue("hold", {"a": 1})
        with worker._lock:  # as a batch claim leaves it: claimed for a slot, not started
            [taken] = storage.claim(
                queues=None, limit=1, now=engine.clock.now(), worker_id=worker.id,
                lease=timedelta(minutes=1),
            )  # fmt: skip
            worker._gate.claiming += 1
            worker._handoff.append(taken)
            worker.request_stop()
        release.set()
    assert ran == [0]
    given_back = storage.get(later.id)
    assert given_back is not None
    assert given_back.state is JobState.QUEUED
    assert given_back.attempts == 0
