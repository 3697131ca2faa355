"""Stored results, ``engine.wait`` and ``engine.result``, on memory, JSON files and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import BaseModel

import backrun
from backrun.jobs import Job, JobState
from backrun.storage.base import Storage
from backrun.storage.memory import MemoryStorage
from tests.helpers import wait_until
from tests.storage.conftest import BACKENDS


class Size(BaseModel):
    width: int
    height: int


class Thumb(BaseModel):
    url: str
    size: Size


class Resize(backrun.Handler[Size]):
    name = "resize"

    def execute(self, payload: Size) -> Thumb:
        return Thumb(url=f"/t/{payload.width}x{payload.height}.png", size=payload)


class Empty(BaseModel):
    pass


class Listing(backrun.Handler[Empty]):
    name = "listing"

    def execute(self, payload: Empty) -> list[Size]:
        return [Size(width=1, height=2), Size(width=3, height=4)]


class Count(backrun.Handler[Size]):
    name = "count"

    def execute(self, payload: Size) -> int:
        return payload.width * payload.height


class Nothing(backrun.Handler[Empty]):
    name = "nothing"

    def execute(self, payload: Empty) -> None:
        return None


class Fails(backrun.Handler[Empty]):
    name = "fails"
    retry = backrun.RetryPolicy(max_retries=0)

    def execute(self, payload: Empty) -> int:
        raise RuntimeError("out of paint")


class Huge(backrun.Handler[Empty]):
    name = "huge"
    retry = backrun.RetryPolicy(max_retries=0)

    def execute(self, payload: Empty) -> str:
        return "x" * 5000


class Untyped(backrun.Handler[Empty]):
    name = "untyped"
    retry = backrun.RetryPolicy(max_retries=0)

    def execute(self, payload: Empty):  # type: ignore[no-untyped-def]
        return {"plain": [1, 2]}


class Unstorable(backrun.Handler[Empty]):
    name = "unstorable"
    retry = backrun.RetryPolicy(max_retries=0)

    def execute(self, payload: Empty) -> Any:
        return object()


gate = threading.Event()


class Gated(backrun.Handler[Empty]):
    name = "gated"

    def execute(self, payload: Empty) -> str:
        assert gate.wait(10)
        return "opened"


HANDLERS: list[type[backrun.Handler[Any]]] = [
    Resize,
    Listing,
    Count,
    Nothing,
    Fails,
    Huge,
    Untyped,
    Unstorable,
    Gated,
]


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    storage = BACKENDS[request.param](tmp_path)
    try:
        yield storage
    finally:
        storage.close()


def make_engine(store: Storage) -> backrun.Engine:
    engine = backrun.Engine(store, middleware=[], threads=2, max_payload_bytes=1000)
    for handler in HANDLERS:
        engine.add_handler(handler)
    return engine


@pytest.fixture
def engine(store: Storage) -> backrun.Engine:
    gate.clear()
    return make_engine(store)


def test_return_values_round_trip(engine: backrun.Engine) -> None:
    size = {"width": 3, "height": 5}
    jobs = {
        "model": engine.enqueue(Resize, size),
        "list": engine.enqueue(Listing),
        "int": engine.enqueue(Count, size),
        "none": engine.enqueue(Nothing),
        "untyped": engine.enqueue(Untyped),
    }
    engine.run_until_idle()
    assert engine.result(jobs["model"].id, timeout=5) == Thumb(
        url="/t/3x5.png", size=Size(width=3, height=5)
    )
    assert engine.result(jobs["list"].id, timeout=5) == [
        Size(width=1, height=2),
        Size(width=3, height=4),
    ]
    assert engine.result(jobs["int"].id, timeout=5) == 15
    assert engine.result(jobs["none"].id, timeout=5) is None
    assert engine.result(jobs["untyped"].id, timeout=5) == {"plain": [1, 2]}
    done = engine.wait(jobs["model"].id, timeout=5)
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"url": "/t/3x5.png", "size": {"width": 3, "height": 5}}
    assert engine.get(jobs["list"].id).result == [  # type: ignore[union-attr]
        {"width": 1, "height": 2},
        {"width": 3, "height": 4},
    ]
    assert engine.get(jobs["none"].id).result is None  # type: ignore[union-attr]


def test_result_of_a_dead_job_raises_job_failed_with_its_error(engine: backrun.Engine) -> None:
    job = engine.enqueue(Fails)
    engine.run_until_idle()
    with pytest.raises(backrun.JobFailed, match="out of paint") as caught:
        engine.result(job.id, timeout=5)
    assert caught.value.job.state is JobState.DEAD
    assert caught.value.error is not None
    assert caught.value.error.type == "RuntimeError"
    assert caught.value.error.message == "out of paint"


def test_result_of_a_cancelled_job_raises_job_failed(engine: backrun.Engine) -> None:
    job = engine.enqueue(Count, {"width": 1, "height": 1}, delay=3600)
    engine.cancel(job.id)
    with pytest.raises(backrun.JobFailed, match="cancelled") as caught:
        engine.result(job.id, timeout=5)
    assert caught.value.error is None


def test_an_oversize_result_fails_the_attempt_with_a_clear_error(engine: backrun.Engine) -> None:
    job = engine.enqueue(Huge)
    engine.run_until_idle()
    stored = engine.get(job.id)
    assert stored is not None
    assert stored.state is JobState.DEAD
    assert stored.result is None
    assert stored.last_error is not None
    assert stored.last_error.type == "backrun.errors.PayloadTooLarge"
    assert "'huge' returned a result too large to store" in stored.last_error.message
    assert "limit is 1000" in stored.last_error.message


def test_an_unstorable_result_fails_the_attempt(engine: backrun.Engine) -> None:
    job = engine.enqueue(Unstorable)
    engine.run_until_idle()
    stored = engine.get(job.id)
    assert stored is not None
    assert stored.state is JobState.DEAD
    assert stored.last_error is not None
    assert "returned a value its return type cannot store" in stored.last_error.message


def test_wait_times_out_cleanly(engine: backrun.Engine) -> None:
    job = engine.enqueue(Count, {"width": 1, "height": 1})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still queued after 0\.2 s"):
        engine.wait(job.id, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 3
    with pytest.raises(TimeoutError):
        engine.result(job.id, timeout=0)
    with pytest.raises(backrun.JobNotFound):
        engine.wait("0" * 32, timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        engine.wait(job.id, timeout=-1)


def test_wait_wakes_when_the_job_finishes(engine: backrun.Engine) -> None:
    job = engine.enqueue(Gated)
    with engine.running():
        wait_until(lambda: engine.get(job.id).state is JobState.RUNNING)  # type: ignore[union-attr]
        threading.Timer(0.3, gate.set).start()
        started = time.monotonic()
        done = engine.wait(job.id, timeout=10)
        assert done.result == "opened"
        assert time.monotonic() - started < 5


class CountingGets(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, job_id: str) -> Job | None:
        self.gets += 1
        return super().get(job_id)


def test_wait_in_process_does_not_poll() -> None:
    store = CountingGets()
    engine = make_engine(store)
    gate.clear()
    job = engine.enqueue(Gated)
    with engine.running():
        wait_until(lambda: store.get(job.id).state is JobState.RUNNING)  # type: ignore[union-attr]
        waiter = threading.Thread(target=engine.wait, args=(job.id, 30))
        before = store.gets
        waiter.start()
        time.sleep(1.0)  # long enough for any polling tick to show
        during = store.gets - before
        gate.set()
        waiter.join(10)
        assert not waiter.is_alive()
    assert during <= 1  # the first look only; then it sleeps until the worker announces


def test_wait_and_result_from_asyncio_and_trio(engine: backrun.Engine) -> None:
    job = engine.enqueue(Count, {"width": 2, "height": 21})
    with engine.running():

        async def from_asyncio() -> Any:
            return await asyncio.to_thread(engine.result, job.id, 10)

        async def from_trio() -> Job:
            return await trio.to_thread.run_sync(engine.wait, job.id, 10)

        assert asyncio.run(from_asyncio()) == 42
        assert trio.run(from_trio).result == 42


def test_the_result_is_stored_in_the_write_that_records_success() -> None:
    writes: list[Job] = []

    class Recording(MemoryStorage):
        def update(self, job: Job) -> None:
            writes.append(job)
            super().update(job)

    engine = make_engine(Recording())
    job = engine.enqueue(Count, {"width": 2, "height": 3})
    engine.run_until_idle()
    mine = [w for w in writes if w.id == job.id]
    assert [(w.state, w.result) for w in mine] == [(JobState.SUCCEEDED, 6)]


def test_an_unresolvable_ctx_annotation_does_not_refuse_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Loose(backrun.Handler[Empty]):
        name = "loose"

        def execute(self, payload: Empty, ctx: OnlyForTypeCheckers) -> int:  # type: ignore[name-defined]  # noqa: F821
            return 7

    engine = backrun.Engine(MemoryStorage(), middleware=[])
    with caplog.at_level(logging.WARNING, logger="backrun.handlers"):
        engine.add_handler(Loose)
    assert "stored untyped" in caplog.text
    job = engine.enqueue(Loose)
    engine.run_until_idle()
    assert engine.result(job.id, timeout=5) == 7
