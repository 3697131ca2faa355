"""Engines with jobs in every state, for the dashboard tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import backrun
from backrun.jobs import Job
from backrun.testing import FakeClock

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Fixture:
    engine: backrun.Engine
    clock: FakeClock
    dead: Job
    queued: Job
    succeeded: Job


def make_engine(storage: backrun.Storage | None = None) -> Fixture:
    """An engine on a fake clock with one dead, one queued and one succeeded job."""
    clock = FakeClock(T0)
    engine = backrun.Engine(
        storage if storage is not None else backrun.MemoryStorage(),
        clock=clock,
        middleware=[],
        retry=backrun.RetryPolicy(max_retries=0),
    )

    @engine.handler(name="mail.send")
    def send(payload: dict[str, str]) -> None:
        if payload.get("fail"):
            raise RuntimeError(payload["fail"])

    dead = engine.enqueue(
        "mail.send",
        {"fail": "smtp down", "to": "a@example.com"},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    engine.run_until_idle(timeout=10)
    clock.advance(timedelta(minutes=3))
    succeeded = engine.enqueue("mail.send", {"to": "b@example.com"}, queue="reports")
    engine.run_until_idle(timeout=10)
    clock.advance(timedelta(minutes=2))
    queued = engine.enqueue("mail.send", {"to": "c@example.com"}, queue="bulk")
    engine.pause("bulk")
    return Fixture(
        engine, clock, _get(engine, dead.id), _get(engine, queued.id), _get(engine, succeeded.id)
    )


def _get(engine: backrun.Engine, job_id: str) -> Job:
    job = engine.get(job_id)
    assert job is not None
    return job
