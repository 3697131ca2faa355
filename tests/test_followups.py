"""``enqueue(..., then=[backrun.Next(...)])`` on memory, JSON files and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydantic
import pytest
from pydantic import BaseModel

import backrun
from backrun.jobs import JobState
from backrun.storage.base import Storage
from tests.storage.conftest import BACKENDS


class Mail(BaseModel):
    to: str


class Work(BaseModel):
    fail: bool = False


sent: list[str] = []
sent_lock = threading.Lock()


class Notify(backrun.Handler[Mail]):
    name = "notify"

    def execute(self, payload: Mail) -> str:
        with sent_lock:
            sent.append(payload.to)
        return f"sent to {payload.to}"


class Parent(backrun.Handler[Work]):
    name = "parent"
    retry = backrun.RetryPolicy(max_retries=0)

    def execute(self, payload: Work) -> int:
        if payload.fail:
            raise RuntimeError("parent failed")
        return 1


def notify_fn(payload: Mail) -> None:
    with sent_lock:
        sent.append("fn:" + payload.to)


@pytest.fixture(params=sorted(BACKENDS))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[backrun.Engine]:
    store: Storage = BACKENDS[request.param](tmp_path)
    engine = backrun.Engine(store, middleware=[], threads=2)
    engine.add_handler(Notify)
    engine.add_handler(Parent)
    engine.add_handler(notify_fn, name="notify_fn")
    sent.clear()
    try:
        yield engine
    finally:
        store.close()


def test_followups_are_enqueued_when_the_parent_succeeds(engine: backrun.Engine) -> None:
    job = engine.enqueue(
        Parent,
        {},
        then=[
            backrun.Next(Notify, {"to": "a@b.c"}),
            backrun.Next("notify_fn", Mail(to="x@y.z"), queue="mail", priority=5),
            backrun.Next(Notify, {"to": "later@b.c"}, delay=timedelta(hours=1)),
        ],
    )
    first, second, later = (f["id"] for f in job.followups)
    for child in (first, second, later):
        assert engine.get(child) is None  # nothing before the parent's success
    engine.run_until_idle()
    parent = engine.wait(job.id, timeout=5)
    assert parent.state is JobState.SUCCEEDED
    assert engine.result(first, timeout=5) == "sent to a@b.c"
    mail = engine.wait(second, timeout=5)
    assert (mail.queue, mail.priority, mail.handler) == ("mail", 5, "notify_fn")
    scheduled = engine.get(later)
    assert scheduled is not None
    assert scheduled.state is JobState.SCHEDULED
    assert parent.finished_at is not None
    assert scheduled.run_at == parent.finished_at + timedelta(hours=1)
    assert sorted(sent) == ["a@b.c", "fn:x@y.z"]


@pytest.mark.parametrize("how", ["dead", "cancelled"])
def test_no_followups_unless_the_parent_succeeds(engine: backrun.Engine, how: str) -> None:
    if how == "dead":
        job = engine.enqueue(Parent, {"fail": True}, then=[backrun.Next(Notify, {"to": "a"})])
    else:
        job = engine.enqueue(Parent, {}, delay=60, then=[backrun.Next(Notify, {"to": "a"})])
        engine.cancel(job.id)
    engine.run_until_idle()
    assert engine.wait(job.id, timeout=5).state.value == how
    assert engine.get(job.followups[0]["id"]) is None
    assert [j.id for j in engine.jobs(limit=10)] == [job.id]


def test_a_followup_is_validated_at_the_parents_enqueue(engine: backrun.Engine) -> None:
    with pytest.raises(pydantic.ValidationError):
        engine.enqueue(Parent, {}, then=[backrun.Next(Notify, {"to": 5})])
    with pytest.raises(backrun.UnknownHandler):
        engine.enqueue(Parent, {}, then=[backrun.Next("nobody", {})])
    with pytest.raises(ValueError, match="queue"):
        engine.enqueue(Parent, {}, then=[backrun.Next(Notify, {"to": "a"}, queue="")])
    with pytest.raises(TypeError, match=r"backrun\.Next"):
        engine.enqueue(Parent, {}, then=[(Notify, {"to": "a"})])  # type: ignore[list-item]
    assert engine.jobs(limit=10) == []


def test_next_takes_the_enqueue_options_only() -> None:
    with pytest.raises(TypeError, match="at"):
        backrun.Next(Notify, {"to": "a"}, at=None)
    assert "notify" in repr(backrun.Next("notify", {"to": "a"}, delay=1))
